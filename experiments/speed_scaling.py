"""Experiment 5, speed scaling: how the sensitive search's time grows with ops, images and strategy.

    python experiments/speed_scaling.py [--models ...] [--work DIR] [--out DIR]   (config: configs/speed_scaling.json)

Every point is a fresh ``qsens search`` process (``benchmarks/search.py``'s ``run_job``: wall time, the job's
own ``search_s`` and compile timings, peak RSS) with a warm JAX compilation cache (one untimed run first fills
it), 100 calibration images and ``--expected_cos 0.9999`` so the search really runs:

* **ops**: each model of the config at ``inference`` search images (MTCNN ONet -> MNIST network -> Lite0 -> Lite2);
* **images**: per model of ``image_sweep``, the search images (10 -> 300; the MNIST network draws them from its
  500 training digits, Lite0 has the 100 of ``images100``);
* **strategy**: on ``strategy_model``, the fast strategy (suffix per candidate, ``loop``), its stacked form
  (``--method_batch concat``) and the naive one (every candidate from the input, TPU-MLIR's cost shape).

Beside each point: the FLOP floor of the fast search (every op's suffix x 3 methods x images, at the best float
forward rate this machine reaches for that model: one jit of the whole graph), and ``search_s / floor``.
A power law ``search_s ~ x^b`` is fitted (least squares in log-log) over ops (b_ops) and images (b_images).
Timings need a quiet machine: the JSON records the load average before each point.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import qsens  # noqa: F401  (first: hostmem's malloc policy)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.search import float_rate, run_job  # noqa: E402
from experiments.common import driver_args, meta, model_folders, write_result  # noqa: E402

EXPERIMENT = "speed_scaling"
N_METHODS = 3


def fit_power(xs, ys) -> float | None:
    """Exponent b of ``y = a x^b`` (least squares on logs); None with fewer than two distinct x."""
    import numpy as np

    if len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def point(key: str, n_inf: int, cfg: dict, work: Path, cache: Path, rates: dict, extra=()) -> dict:
    from benchmarks.flops import suffix_flops
    from qsens.zoo import zoo_path

    model = zoo_path(f"{key}.onnx")
    images = zoo_path(model_folders(key)[0])
    if key not in rates:
        rates[key] = float_rate(str(model), 30)
    rate, _, g = rates[key]
    floor_s = sum(suffix_flops(g)[i] for i in range(len(g.ops))) * N_METHODS * n_inf / rate
    load = os.getloadavg()[0]
    name = f"{key}_{n_inf}_{'_'.join(extra) or 'fast'}"
    r = run_job(model, images, max(cfg["images"], n_inf), n_inf, work / name, cache, extra)
    t = r["timings"]
    return {"model": key, "ops": len(g.ops), "inference": n_inf, "strategy": " ".join(extra) or "fast",
            "search_s": t["search_s"], "compile_s": t["compile"]["compile_s"], "wall_s": r["wall_s"],
            "peak_rss_mb": r["peak_rss_mb"], "flop_floor_s": floor_s, "search_over_floor": t["search_s"] / floor_s,
            "float_rate_gflops": rate / 1e9, "load_before": load}


def fits(res: dict) -> dict:
    """Power-law exponents of search time: over the ops sweep against op count and against the FLOP floor (the
    models differ in FLOPs per op far more than in op count, so the floor is the fair axis), over each image sweep
    against the number of images; and naive / fast."""
    ops, st = res["ops_sweep"], res["strategy_sweep"]
    return {"b_ops": fit_power([p["ops"] for p in ops], [p["search_s"] for p in ops]),
            "b_flop_floor": fit_power([p["flop_floor_s"] for p in ops], [p["search_s"] for p in ops]),
            "b_images": {k: fit_power([p["inference"] for p in ps], [p["search_s"] for p in ps])
                         for k, ps in res["image_sweep"].items()},
            "naive_over_fast": st[2]["search_s"] / st[0]["search_s"]}


def markdown(res: dict) -> str:
    lines = ["| sweep | model | ops | search images | strategy | search s | FLOP floor s | search / floor | "
             "compile s | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    sweeps = (("ops", res["ops_sweep"]), *((f"images ({k})", v) for k, v in res["image_sweep"].items()),
              ("strategy", res["strategy_sweep"]))
    for sweep, pts in sweeps:
        for q in pts:
            lines.append(f"| {sweep} | {q['model']} | {q['ops']} | {q['inference']} | {q['strategy']} | "
                         f"{q['search_s']:.2f} | {q['flop_floor_s']:.2f} | {q['search_over_floor']:.2f} | "
                         f"{q['compile_s']:.1f} | {q['load_before']:.1f} |")
    f = res["fits"]
    lines += ["", f"search_s ~ ops^{f['b_ops']:.2f} (op count confounds model size) ~ FLOP floor^"
              f"{f['b_flop_floor']:.2f}; ~ images^"
              + ", ".join(f"{b:.2f} ({k})" for k, b in f["b_images"].items() if b is not None)
              + f"; naive / fast = {f['naive_over_fast']:.1f}x"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    cfg, out, work = driver_args(EXPERIMENT, __doc__, argv, "the runs' folders and compilation cache")
    cache = work / "jax_cache"
    rates: dict = {}
    t0 = time.perf_counter()
    for key in cfg["models"]:  # fill the compilation cache (untimed)
        point(key, cfg["inference"], cfg, work / "warmup", cache, rates)
    ops = [point(k, cfg["inference"], cfg, work, cache, rates) for k in cfg["models"]]
    images = {k: [point(k, n, cfg, work, cache, rates) for n in ns] for k, ns in cfg["image_sweep"].items()}
    sm = cfg["strategy_model"]
    strategies = [point(sm, cfg["inference"], cfg, work, cache, rates, extra)
                  for extra in ((), ("--method_batch", "concat"), ("--strategy", "naive"))]
    res = {"meta": meta(cfg["seed"], cfg), "ops_sweep": ops, "image_sweep": images, "strategy_sweep": strategies,
           "timings": {"total_s": time.perf_counter() - t0}}
    res["fits"] = fits(res)
    p = write_result(EXPERIMENT, "speed_scaling", res, out)
    (out / "summary.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
