"""The whole sensitive-layer search job on EfficientNet-Lite0 (calibrate + search), cold and warm, the naive
strategy, the FLOP floor and the float forward rate, in one run.

    python benchmarks/search.py [--images 100 --inference 30]

Each job is a fresh `qsens search` process (peak RSS from the OS); "cold" uses an empty JAX compilation cache,
"warm" the cache the cold run filled.  Bars (issue 6): whole job <= 45 s cold, <= 30 s warm; search compute
<= 1.25 x (FLOP floor / float rate); XLA compile <= 8 s cold; peak RSS <= 1.5 GB.  TPU-MLIR: 402 s, 800 MB.
Writes benchmarks/results/search_<device>.json.
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
from common import machine, search_job_cmd, write  # noqa: E402
from flops import suffix_flops  # noqa: E402


def run_job(model, images, n_img, n_inf, out_dir, cache_dir, extra=()):
    env = dict(os.environ, QSENS_JAX_CACHE=str(cache_dir), SOURCE_DATE_EPOCH="1700000000")
    cmd = search_job_cmd(model, images, n_img, n_inf, out_dir, extra)
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    out, err = p.stdout.read(), p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"job failed: {' '.join(cmd)}\n{err[-3000:]}")
    res = json.loads((Path(out_dir) / "search.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024, "stdout": out.strip().splitlines()[-4:],
            "timings": res["timings"], "float_layers": res["float_layers"], "summary": res["summary"],
            "n_candidates_evaluated": res["n_candidates_evaluated"], "n_candidates": res["n_candidates"],
            "ops": [(o["op"], [c["loss"] for c in o["candidates"]]) for o in res["ops"]],
            "evaluated_per_op": [sum(1 for c in o["candidates"] if c["same_as"] is None) for o in res["ops"]]}


def float_rate(model_path, n_inf, chunk=10, runs=5):
    """The best float forward rate (FLOP/s) available: the whole graph in one jit (XLA fuses across ops), at
    the search's batch (``chunk`` images per call, ``n_inf`` images in all)."""
    import jax
    import numpy as np

    from qsens.onnx import to_jax

    fn, params = to_jax(model_path)
    f = jax.jit(fn)
    g = fn.model.graph_at(chunk)
    x = np.random.default_rng(0).standard_normal(g.input_shapes[0]).astype(np.float32)
    calls = -(-n_inf // chunk)

    def fwd():
        for _ in range(calls):
            jax.block_until_ready(f(params, {g.inputs[0]: x}))

    fwd()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fwd()
        ts.append(time.perf_counter() - t)
    t = float(np.median(ts))
    flops = suffix_flops(fn.model.graph)[0] * calls * chunk
    return flops / t, t, fn.model.graph


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--inference", type=int, default=30)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args(argv)
    from qsens.zoo import zoo_path

    model = zoo_path("efficientnet_lite0.onnx")
    images = zoo_path("images100")
    rate, t_fwd, g = float_rate(str(model), args.inference)
    suf = suffix_flops(g)
    n_methods = 3
    floor_flops = sum(suf[i] for i in range(len(g.ops))) * n_methods * args.inference
    floor_s = floor_flops / rate
    print(f"float forward (whole graph, one jit, batch 10): {t_fwd * 1e3:.0f} ms for {args.inference} images = {rate / 1e9:.1f} GFLOP/s; "
          f"FLOP floor of the search ({len(g.ops)} ops x {n_methods} methods x {args.inference} images x suffix): "
          f"{floor_flops / 1e9:.0f} GFLOP = {floor_s:.1f} s at that rate")
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        cache = td / "jax_cache"
        cold = run_job(model, images, args.images, args.inference, td / "cold", cache)
        warm = run_job(model, images, args.images, args.inference, td / "warm", cache)
        concat = run_job(model, images, args.images, args.inference, td / "concat", cache, ("--method_batch", "concat"))
        naive = None if args.skip_naive else run_job(model, images, args.images, args.inference, td / "naive", cache,
                                                     ("--strategy", "naive"))
    for name, r in (("cold", cold), ("warm", warm), ("method_batch concat (warm)", concat)) + (
            (("naive (warm cache)", naive),) if naive else ()):
        t = r["timings"]
        print(f"{name}: whole job {r['wall_s']:.1f} s, search compute {t['search_s']:.1f} s, "
              f"XLA compile {t['compile']['compile_s']:.1f} s ({t['compile']['executables']} executables), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    ratio = warm["timings"]["search_s"] / floor_s
    # the floor of the candidates actually evaluated (methods with an identical effective threshold share a loss)
    eval_flops = sum(suf[i] * n for i, n in enumerate(warm["evaluated_per_op"])) * args.inference
    eval_floor_s = eval_flops / rate
    eval_ratio = warm["timings"]["search_s"] / eval_floor_s
    print(f"evaluated candidates: {sum(warm['evaluated_per_op'])} of {n_methods * len(g.ops)}; their FLOP floor "
          f"{eval_flops / 1e9:.0f} GFLOP = {eval_floor_s:.1f} s; search compute / that floor = {eval_ratio:.2f}")
    print(f"search compute / FLOP floor = {ratio:.2f} (bar 1.25); whole job cold {cold['wall_s']:.1f} s (bar 45), "
          f"warm {warm['wall_s']:.1f} s (bar 30); TPU-MLIR 402 s -> {402 / warm['wall_s']:.0f}x faster warm")
    if naive:
        print(f"naive / fast search compute = {naive['timings']['search_s'] / warm['timings']['search_s']:.2f}x; "
              f"max |loss difference| = {max(abs(a - b) for (_, la), (_, lb) in zip(warm['ops'], naive['ops']) for a, b in zip(la, lb)):.2e}")
    out = write("search", {
        "benchmark": "sensitive-layer search, EfficientNet-Lite0, BM1684, MAX/Percentile9999/KL",
        "images": args.images, "inference": args.inference,
        "float_forward_s": t_fwd, "float_rate_flops": rate, "flop_floor_flops": floor_flops, "flop_floor_s": floor_s,
        "search_over_floor": ratio, "evaluated_flop_floor_s": eval_floor_s, "search_over_evaluated_floor": eval_ratio,
        "cold": cold, "concat": concat, "warm": warm, "naive": naive,
        "bars": {"cold_s": 45, "warm_s": 30, "search_over_floor": 1.25, "compile_cold_s": 8, "rss_mb": 1536},
        "tpu_mlir": {"seconds": 402, "mb": 800, "note": "mobilenet_v2 per DOC-EN, not run here"},
        "machine": machine(),
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
