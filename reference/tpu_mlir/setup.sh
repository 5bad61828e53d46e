#!/usr/bin/env bash
# Build the TPU-MLIR reference harness: one Python 3.10 venv per TPU-MLIR release.
#
#   bash reference/tpu_mlir/setup.sh            # 1.23 and 1.30.2
#   bash reference/tpu_mlir/setup.sh 1.23       # one version
#
# Venvs go to ${QSENS_TPU_MLIR_HOME:-~/.cache/qsens/tpu_mlir}/<version> (~6.4 GB each: PyPI serves
# torch 2.1.0 for Python 3.10 only as its CUDA build). This is for generating references; it is never
# part of .ci/run. What each step is for was found by trying (issue 10):
#  - TPU-MLIR wheels require Python 3.10 exactly: the pyenv interpreter of this machine image.
#  - tpu_mlir/__init__ imports pkg_resources: setuptools 65.5.0.
#  - the wheel bundles libc.so.6 / libm.so.6 / libpthread.so.0 in lib/third_party; with Debian's
#    newer loader tpuc-opt segfaults unless they are moved out of the library path.
#  - the searches draw graphs with graphviz: Debian's `dot`, wrapped so that TPU-MLIR's
#    LD_LIBRARY_PATH does not leak into it.
set -euo pipefail
HOME_DIR=${QSENS_TPU_MLIR_HOME:-$HOME/.cache/qsens/tpu_mlir}
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(1.23 1.30.2)

PY=$(PYENV_VERSION=3.10.13 pyenv which python3.10 2>/dev/null || command -v python3.10 || true)
if [ -z "$PY" ] || ! "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
  echo "setup.sh: TPU-MLIR needs Python 3.10 (pyenv 3.10.13 or python3.10 on PATH); none found." \
       "Install one (pyenv install 3.10.13) and rerun." >&2
  exit 2
fi

if ! command -v dot >/dev/null 2>&1 || ! dpkg -s graphviz >/dev/null 2>&1; then
  echo "== graphviz (Debian)"
  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || {
    echo "setup.sh: could not install Debian's graphviz (needs root + the Debian mirror)" >&2; exit 2; }
fi

start=$(date +%s)
for V in "${VERSIONS[@]}"; do
  VENV="$HOME_DIR/$V"
  if [ -f "$VENV/.complete" ]; then echo "== tpu-mlir $V: ready in $VENV"; continue; fi
  echo "== tpu-mlir $V -> $VENV"
  rm -rf "$VENV"; mkdir -p "$HOME_DIR"
  "$PY" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  WHEELS=$(mktemp -d)
  "${PIP[@]}" download --no-deps -d "$WHEELS" "tpu-mlir==$V"
  WHL=$(ls "$WHEELS"/tpu_mlir-*.whl)
  # The torch version its extras pin (2.1.0 for 1.23); the constraint file of this image caps torch
  # for the project's own venvs, not for this one.
  TORCH=$(unzip -p "$WHL" '*.dist-info/METADATA' | sed -n 's/^Requires-Dist: torch==\([0-9.]*\).*/\1/p' | head -1)
  "${PIP[@]}" install "setuptools==65.5.0" wheel
  PIP_CONSTRAINT=/dev/null "${PIP[@]}" install "$WHL[onnx]" psutil ${TORCH:+"torch==$TORCH"}
  rm -rf "$WHEELS"
  LIB=$("$VENV/bin/python" -c 'import importlib.util,os; print(os.path.dirname(importlib.util.find_spec("tpu_mlir").origin))')/lib/third_party
  mkdir -p "$LIB/../third_party_moved"
  for f in libc.so.6 libm.so.6 libpthread.so.0; do
    [ -e "$LIB/$f" ] && mv "$LIB/$f" "$LIB/../third_party_moved/"
  done
  # dot wrapper: TPU-MLIR's envsetup puts its own libs first on LD_LIBRARY_PATH
  cat > "$VENV/bin/dot" <<'DOT'
#!/bin/sh
unset LD_LIBRARY_PATH
exec /usr/bin/dot "$@"
DOT
  chmod +x "$VENV/bin/dot"
  # smoke test: the Top-dialect optimizer binary runs and the tools import
  "$VENV/bin/python" -c 'import tpu_mlir' >/dev/null
  (. "$VENV/bin/activate"; tpuc-opt --version >/dev/null 2>&1 || tpuc-opt --help >/dev/null) || {
    echo "setup.sh: tpuc-opt of tpu-mlir $V does not run; see $VENV" >&2; exit 1; }
  du -sh "$VENV" | awk -v v="$V" '{print "== tpu-mlir " v ": " $1}'
  touch "$VENV/.complete"
done
echo "== done in $(( $(date +%s) - start )) s"
