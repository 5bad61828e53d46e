"""TPU-MLIR's ``run_qtable.py`` and ``qsens qtable`` on the same model, table, images and flags, in one run.

    python benchmarks/qtable.py [--images 10 --expected_cos 0.99 --min_layer_cos 0.99] [--skip-tpu-mlir]

EfficientNet-Lite0 (TorchScript opset 13 export) with the KL table TPU-MLIR 1.23's ``run_calibration.py`` wrote
(``tests/fixtures/tpu_mlir/efficientnet_lite0_op13/cali_table``), so both searches start from the same table.
TPU-MLIR (the harness, ``bash reference/tpu_mlir/setup.sh 1.23``) runs ``model_transform.py`` and
``run_qtable.py`` (its own time is the wall time of that command); qsens runs ``qsens qtable`` as a fresh process,
cold (empty JAX compilation cache) then warm.  Bar (issue 11): qsens warm <= 20 s on this CPU.
Writes benchmarks/results/qtable_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write  # noqa: E402
from vs_tpu_mlir import PRESETS, timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests/fixtures/tpu_mlir/efficientnet_lite0_op13/cali_table"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--expected_cos", default="0.99")
    ap.add_argument("--min_layer_cos", default="0.99")
    ap.add_argument("--skip-tpu-mlir", action="store_true")
    a = ap.parse_args(argv)
    from qsens.zoo import zoo_path

    model = zoo_path("efficientnet_lite0_op13.onnx")
    images = zoo_path("images100")
    flags = PRESETS["efficientnet_lite0"]
    work = Path(tempfile.mkdtemp(prefix="qtable_bench_"))
    res: dict = {"model": model.name, "images": a.images, "expected_cos": a.expected_cos,
                 "min_layer_cos": a.min_layer_cos, "table": str(TABLE.relative_to(ROOT)), "machine": machine()}
    if not a.skip_tpu_mlir:
        t_out = work / "tpu_mlir"
        t_out.mkdir()
        shutil.copy(TABLE, t_out / "cali_table")
        timed([sys.executable, str(ROOT / "reference/tpu_mlir/run.py"), str(model), "--out", str(t_out), "--dataset",
               str(images), "--inference_num", str(a.images), "--expected_cos", a.expected_cos, "--min_layer_cos",
               a.min_layer_cos, *flags, "--steps", "transform,qtable"])
        s = json.loads((t_out / "run_qtable" / "summary.json").read_text())
        res["tpu_mlir"] = {"run_qtable_wall_s": s["wall_s"], "float_layers": s["fp_layers"],
                           "all_int8_cos": s["all_int8_cos"], "mix_outputs_cos": s["mix_outputs_cos"],
                           "steps": len(s["steps"])}
    env = dict(os.environ, QSENS_JAX_CACHE=str(work / "jax_cache"))
    runs = {}
    for k in ("cold", "warm"):
        out = work / f"qsens_{k}"
        wall, rss, _ = timed([sys.executable, "-m", "qsens", "qtable", str(model), "--dataset", str(images),
                              "--input_num", str(a.images), *flags, "--calibration_table", str(TABLE),
                              "--expected_cos", a.expected_cos, "--min_layer_cos", a.min_layer_cos,
                              "--out_dir", str(out), "-q"], env=env)
        q = json.loads((out / "qtable.json").read_text())
        runs[k] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss), "search_s": round(q["timings"]["search_s"], 2),
                   "float_layers": q["float_layers"], "all_int8_cos": q["all_int8_similarity"],
                   "reported_mix_cos": q["reported_mix_similarity"], "true_mix_cos": q["true_mix_similarity"],
                   "steps": len(q["state"]["steps"]), "compile": q["timings"]["compile"]}
    res["qsens"] = runs
    res["bar_warm_s"] = 20
    if "tpu_mlir" in res:
        res["speedup_warm"] = round(res["tpu_mlir"]["run_qtable_wall_s"] / runs["warm"]["wall_s"], 1)
        res["same_float_layers"] = runs["warm"]["float_layers"] == res["tpu_mlir"]["float_layers"]
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1))
    print(f"wrote {write('qtable', res)}")


if __name__ == "__main__":
    main()
