"""The whole-graph BM1684 mixed-precision model (`MixedModel.apply`, one jit): compile time and forward time
on 30 images of EfficientNet-Lite0 (all-ones mask = the INT8 model).  This is the function a naive search
would call once per (op, method); `benchmarks/search.py` measures the search strategies themselves.

    python benchmarks/mixed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, write  # noqa: E402


def main():
    from qsens.calibrate import calibrate
    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import load_inputs, make_preprocess
    from qsens.quant.mixed import MixedModel, make_plan
    from qsens.zoo import zoo_path

    fn, params = to_jax(zoo_path("efficientnet_lite0.onnx"))
    g = fn.graph
    pp = make_preprocess(g, preset="efficientnet_lite0")
    files = select_files(str(zoo_path("images100")), input_num=30)
    cal = calibrate(fn.model, files, pp, methods=("max",), tune_num=0, progress=False)
    plan = make_plan(g, {t: cal.stats[t].min for t in g.tensors})
    th = np.array([cal.tuned["max"][t] for t in g.tensors], np.float32)
    x = load_inputs(files, g, pp)
    mm = MixedModel(fn.model, plan)
    f = jax.jit(mm.apply)
    ones = np.ones(len(g.ops), bool)
    t = time.perf_counter()
    lowered = f.lower(params, x, th, ones)
    t_lower = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t
    fwd, runs = median_time(lambda: jax.block_until_ready(compiled(params, x, th, ones)), n=5)
    ff = jax.jit(fn)
    flt, _ = median_time(lambda: jax.block_until_ready(ff(params, x)), n=5)
    print(f"mixed model (whole graph, one jit), Lite0, 30 images: trace+lower {t_lower:.1f} s, XLA compile "
          f"{t_compile:.1f} s, forward {fwd * 1e3:.0f} ms (float model {flt * 1e3:.0f} ms, ratio {fwd / flt:.1f}x)")
    out = write("mixed", {"benchmark": "MixedModel.apply, Lite0, 30 images, all-ones mask",
                          "lower_s": t_lower, "compile_s": t_compile, "forward_s": fwd, "forward_runs_s": runs,
                          "float_forward_s": flt, "naive_search_estimate_s": fwd * 3 * len(g.ops),
                          "machine": machine()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
