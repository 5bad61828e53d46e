#!/usr/bin/env bash
# GPU check, prepared for the lent GPU machine (one short run; writes under $OUT when set, else benchmarks/results).
#   bash benchmarks/gpu.sh
# Installs jax[cuda], builds the zoo, runs the search benchmark (cold + warm + naive) and the float forward on the
# GPU with deterministic XLA ops, then compares the per-(op, method) losses with the committed CPU run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"
python3 -m venv .venv-gpu && . .venv-gpu/bin/activate
pip install -q torch==2.13.0 && pip install -q -e '.[experiments,test]' && pip install -q --no-deps facenet-pytorch foolbox
pip install -q "jax[cuda12]"
python - <<'PY'
import jax; print(jax.devices())
PY
python benchmarks/forward.py --no-split | tee "$OUT/gpu_forward.txt"
python benchmarks/search.py | tee "$OUT/gpu_search.txt"
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
gpu = json.loads((pathlib.Path("benchmarks/results") / "search_gpu.json").read_text())
cpu = json.loads((pathlib.Path("benchmarks/results") / "search_cpu.json").read_text())
d = max(abs(a - b) for (_, la), (_, lb) in zip(gpu["warm"]["ops"], cpu["warm"]["ops"]) for a, b in zip(la, lb))
same = gpu["warm"]["float_layers"] == cpu["warm"]["float_layers"]
print(f"CPU vs GPU: max |loss difference| {d:.2e}; same float layers: {same}")
(out / "gpu_vs_cpu.json").write_text(json.dumps({"max_loss_diff": d, "same_float_layers": same}, indent=1))
PY
