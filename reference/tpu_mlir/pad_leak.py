#!/usr/bin/env python3
"""Reproduce a TPU-MLIR 1.23 interpreter defect: an INT8 ``Pad`` with a non-zero fill value changes its border on
every invocation of the same ``pymlir`` module.

    python reference/tpu_mlir/pad_leak.py [--version 1.23]

Converts ``tests/fixtures/tpu_mlir/gen_const/gen_const.onnx`` (``pad30_Pad``: fill 0.5), lowers it to BM1684 INT8
with the fixture's ``cali_table`` and runs the first dumped sample four times (samples 0, 1, 0, 0).  Found: the
border of ``pad30_Pad`` reads 0.503 (the fill's code 8 times the scale 0.0629), then 0.0020, then 0.000125 -- the
stored fill is multiplied by the scale again at each call -- and the network output for the same sample changes
(run 1 vs run 3: up to 1.17).  ``run_sensitive_layer.py`` scores its models this way (one module, many images), so
its all-INT8 similarity and the loss of ``pad30_Pad`` are off from the second image on (tests/test_tpu_mlir_oracle.py,
``INTERPRETER_DEFECT``).  qsens computes what BM1684 does: the fill's code on every sample.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run  # noqa: E402  (harness_env, venv_python)

FIX = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tpu_mlir" / "gen_const"


def inside() -> None:
    import numpy as np
    import pymlir
    from utils.mlir_shell import mlir_lowering

    mlir_lowering("gen_const.mlir", "gc_int8.mlir", "INT8", "bm1684", 1, 1, str(FIX / "cali_table"), False, None)
    x = np.load(FIX / "int8" / "inputs.npz")["input"]
    pymlir.set_mem_mode("value_mem")
    m = pymlir.module()
    m.load("gc_int8.mlir")
    runs = []
    for s in (0, 1, 0, 0):
        v = x[s : s + 1].astype(np.float32)
        m.set_tensor("input", v, v.shape)
        m.invoke(True)
        t = m.get_all_tensor()
        runs.append((float(np.array(t["pad30_Pad"]).ravel()[0]), np.array(t["conv55_Conv"]).copy()))
    print("pad30_Pad border, runs 1/3/4 (sample 0):", [round(runs[i][0], 7) for i in (0, 2, 3)])
    print("conv55_Conv (an output), sample 0, run 1 vs run 3: max |diff| =", float(np.abs(runs[0][1] - runs[2][1]).max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default="1.23")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        return inside()
    env = run.harness_env(a.version)
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(FIX / "gen_const.onnx", d)
        subprocess.run(["model_transform.py", "--model_name", "gen_const", "--model_def", "gen_const.onnx",
                        "--resize_dims", "16,16", "--mean", "127.5,127.5,127.5", "--scale",
                        "0.0078125,0.0078125,0.0078125", "--pixel_format", "rgb", "--mlir", "gen_const.mlir"],
                       cwd=d, env=env, check=True, capture_output=True)
        subprocess.run([str(run.venv_python(a.version)), os.path.abspath(__file__), "--inside"], cwd=d, env=env,
                       check=True)


if __name__ == "__main__":
    main()
