#!/usr/bin/env bash
# GPU checks, one short run on the lent GPU machine (no network there; its python3 has jax[cuda], onnx,
# onnxruntime, opencv, matplotlib, tqdm, pytest, hypothesis).  The zoo travels in .gpuzoo/ (git-ignored):
#   mkdir -p .gpuzoo/zoo && cp -r ~/.cache/qsens/zoo/{efficientnet_lite0.onnx,efficientnet_lite0_op13.onnx,images,images100,manifest.json} .gpuzoo/zoo/
#   (device tool) run: QSENS_GIT_REV=<commit> bash benchmarks/gpu.sh   carry: [".gpuzoo"]   (STEPS=tests,forward,search,qtable)
# Steps (each bounded by `timeout`, all logged; one failing does not stop the others):
#   1. the INT8 / mixed-precision / search / calibration tests on the GPU backend (bit-exact integer paths;
#      the zoo-model tests need the whole zoo, which is not carried, and are deselected);
#   2. benchmarks/forward.py (native convolutions on GPU, whole batch per step);
#   3. benchmarks/search.py (cold, warm, concat, naive), then the per-(op, method) losses against the committed
#      CPU run;
#   4. benchmarks/qtable.py --skip-tpu-mlir (qsens qtable on Lite0, cold and warm);
#   5. (STEPS=...,scaling) tests/test_devices.py and benchmarks/scaling.py --skip-memory (--devices 1/2/4 on the
#      real devices when the machine has several, else forced host devices for the sharding checks).
# Results land in $OUT (else benchmarks/results/gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_out}
mkdir -p "$OUT"
export QSENS_GIT_REV="${QSENS_GIT_REV:-}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 QSENS_HOME="$PWD/.gpuzoo"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # 4 pytest workers share the GPU (75 % preallocation each -> OOM)
STEPS=${STEPS:-tests,forward,search}
PY=${PY:-python3}
log="$OUT/gpu_log.txt"
step() { local t=$1; shift; echo "=== $* (limit ${t}s)" | tee -a "$log"; timeout "$t" "$@" 2>&1 | tee -a "$log"; echo "=== rc ${PIPESTATUS[0]}" | tee -a "$log"; }

step 60 nvidia-smi -L
step 60 $PY -c "import jax, jaxlib, onnx, onnxruntime; print(jax.__version__, jaxlib.__version__, onnx.__version__, onnxruntime.__version__, jax.devices())"
[[ $STEPS == *tests* ]] && step 200 $PY -m pytest -q -p no:cacheprovider tests/quant tests/test_mixed.py tests/test_search.py tests/calib tests/test_qtable.py tests/test_calisearch.py tests/test_layering.py -n 4 -k "not lite0 and not pnet"
[[ $STEPS == *forward* ]] && step 90 $PY benchmarks/forward.py --no-split
if [[ $STEPS == *search* ]]; then
step 240 $PY benchmarks/search.py --skip-naive
$PY - "$OUT" <<'PY' 2>&1 | tee -a "$log"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
res = pathlib.Path("benchmarks/results")
gpu = json.loads((res / "search_gpu.json").read_text())
cpu = json.loads((res / "search_cpu.json").read_text())
d = max(abs(a - b) for (_, la), (_, lb) in zip(gpu["warm"]["ops"], cpu["warm"]["ops"]) for a, b in zip(la, lb))
same = gpu["warm"]["float_layers"] == cpu["warm"]["float_layers"]
print(f"CPU vs GPU: max |loss difference| {d:.2e}; same float layers: {same}")
(out / "gpu_vs_cpu.json").write_text(json.dumps({"max_loss_diff": d, "same_float_layers": same,
                                                  "gpu": gpu["warm"]["float_layers"], "cpu": cpu["warm"]["float_layers"]}, indent=1))
PY
fi
[[ $STEPS == *qtable* ]] && step 150 $PY benchmarks/qtable.py --skip-tpu-mlir
if [[ $STEPS == *scaling* ]]; then
step 200 $PY -m pytest -q -p no:cacheprovider tests/test_devices.py
step 240 $PY benchmarks/scaling.py --skip-memory
fi
cp benchmarks/results/*_gpu.json "$OUT"/ 2>/dev/null
ls -la "$OUT"
