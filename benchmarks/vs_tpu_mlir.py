"""TPU-MLIR's ``run_sensitive_layer.py`` and ``qsens search`` on the same model, images and flags, in one run.

    python benchmarks/vs_tpu_mlir.py [--model efficientnet_lite0_op13.onnx --images 100 --inference 30]

Needs the reference harness (``bash reference/tpu_mlir/setup.sh 1.23``). Both tools start from the ONNX file:
TPU-MLIR runs ``model_transform.py``, ``run_calibration.py`` (the KL table) and ``run_sensitive_layer.py``; qsens
runs ``qsens search`` without a table (it calibrates the same base table and the per-method tables itself), in a
fresh process with a warm JAX compilation cache (a first qsens run fills it; its time is reported too). Wall
times are whole processes; peak RSS from the OS (TPU-MLIR's children included). Also compares the outcome: the
float layers, the all-INT8 and mix similarities. Writes benchmarks/results/vs_tpu_mlir_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {  # TPU-MLIR flags of the zoo models (the same as qsens's presets)
    "efficientnet_lite0": ["--input_shapes", "[[1,3,224,224]]", "--resize_dims", "256,256", "--keep_aspect_ratio",
                           "--mean", "127,127,127", "--scale", "0.0078125,0.0078125,0.0078125", "--pixel_format", "rgb"],
    "mtcnn_pnet": ["--input_shapes", "[[1,3,48,48]]", "--mean", "127.5,127.5,127.5", "--scale",
                   "0.0078125,0.0078125,0.0078125", "--pixel_format", "rgb"],
}


def timed(cmd, env=None, cwd=None):
    """Wall time and peak RSS (MB, the process itself) of one command."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        log.seek(0)
        out = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{out[-3000:]}")
    return wall, ru.ru_maxrss / 1024, out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet_lite0_op13.onnx")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--inference", type=int, default=30)
    ap.add_argument("--max_float_layers", type=int, default=5)
    ap.add_argument("--expected_cos", default="0.9999")
    a = ap.parse_args(argv)
    from qsens.zoo import zoo_path

    model = zoo_path(a.model)
    images = zoo_path("images100")
    key = next(k for k in PRESETS if Path(a.model).stem.startswith(k))
    flags = PRESETS[key]
    common = ["--dataset", str(images), "--input_num", str(a.images), "--inference_num", str(a.inference),
              "--expected_cos", a.expected_cos, "--max_float_layers", str(a.max_float_layers)]
    work = Path(tempfile.mkdtemp(prefix="vs_tpu_mlir_"))
    res: dict = {"model": a.model, "images": a.images, "inference": a.inference, "flags": flags, "machine": machine()}

    # TPU-MLIR: transform + run_calibration + run_sensitive_layer (the harness drives its CLI tools)
    t_out = work / "tpu_mlir"
    wall, _, _ = timed([sys.executable, str(ROOT / "reference/tpu_mlir/run.py"), str(model), "--out", str(t_out),
                        *common, *flags, "--steps", "transform,calibrate,sensitive", "--cali_methods", ""])
    meta = json.loads((t_out / "meta.json").read_text())
    summ = json.loads((t_out / "sensitive" / "summary.json").read_text())
    steps = {c["cmd"].split()[0]: c["wall_s"] for c in meta["commands"]}
    res["tpu_mlir"] = {"version": meta["tpu_mlir"], "wall_s": round(wall, 2), "steps_s": steps,
                       "float_layers": summ["float_layers"], "int8_similarity": summ["int8_outputs_cos"],
                       "mix_similarity": summ["mix_outputs_cos"]}

    # qsens: one process for the whole job (calibration included); first run fills the compile cache
    env = dict(os.environ, QSENS_JAX_CACHE=str(work / "jax_cache"))
    runs = []
    for i in range(2):
        out = work / f"qsens{i}"
        wall, rss, stdout = timed([sys.executable, "-m", "qsens", "search", str(model), *common, *flags,
                                   "--out_dir", str(out), "-q"], env=env)
        s = json.loads((out / "search.json").read_text())
        runs.append({"wall_s": round(wall, 2), "peak_rss_mb": round(rss),
                     "float_layers": s["float_layers"], "int8_similarity": s["summary"]["int8"]["similarity"],
                     "mix_similarity": s["summary"]["mix_new_table"]["similarity"]})
    res["qsens"] = {"cold": runs[0], "warm": runs[1]}
    res["speedup_warm"] = round(res["tpu_mlir"]["wall_s"] / runs[1]["wall_s"], 1)
    res["speedup_cold"] = round(res["tpu_mlir"]["wall_s"] / runs[0]["wall_s"], 1)
    res["same_float_layers"] = runs[1]["float_layers"] == summ["float_layers"]
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1))
    write("vs_tpu_mlir", res)


if __name__ == "__main__":
    main()
