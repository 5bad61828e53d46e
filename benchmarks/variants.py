"""Search variants against the sensitive search on EfficientNet-Lite0, in one run, cold and warm.

    python benchmarks/variants.py [--images 100 --inference 30]

Each job is a fresh `qsens search` process on the same images and the same base table (the sensitive run's
``cali_table``); "cold" uses an empty JAX compilation cache, "warm" the cache the cold runs filled.  Measured:
the search phase (``search_s``) and the whole job of the sensitive search (TPU-MLIR's algorithm), ``grad_screen``
(gradient screen + exact top-K) and ``leave_one_out`` (exact, every op), and ``auto_n`` for 3 steps (walks,
executables and calls per step).  Bar (issue 13): grad_screen's search <= 0.3 x the sensitive search's.
Writes benchmarks/results/variants_<device>.json.
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


def run_job(model, images, n_img, n_inf, out_dir, cache_dir, extra=()):
    env = dict(os.environ, QSENS_JAX_CACHE=str(cache_dir), SOURCE_DATE_EPOCH="1700000000")
    cmd = search_job_cmd(model, images, n_img, n_inf, out_dir, extra)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"job failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    res = json.loads((Path(out_dir) / "search.json").read_text())
    out = {"wall_s": round(wall, 2), "search_s": round(res["timings"]["search_s"], 2),
           "compile": res["timings"]["compile"], "float_layers": res["float_layers"],
           "mix_similarity": res["summary"]["mix_new_table"]["similarity"]}
    if "counts" in res:
        out["counts"] = res["counts"]
        out["n_evaluations"] = res["summary"]["n_evaluations"]
        if "grad" in res["state"]:
            out["gradient_pass_s"] = round(res["state"]["grad"]["seconds"], 2)
    else:
        out["n_evaluations"] = res["n_candidates_evaluated"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--inference", type=int, default=30)
    args = ap.parse_args(argv)
    from qsens.zoo import zoo_path

    model, images = zoo_path("efficientnet_lite0.onnx"), zoo_path("images100")
    res = {"benchmark": "search variants vs the sensitive search, Lite0", "images": args.images,
           "inference": args.inference}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        cache = td / "jax_cache"
        for phase in ("cold", "warm"):
            r = res[phase] = {}
            r["sensitive"] = run_job(model, images, args.images, args.inference, td / f"s_{phase}", cache)
            table = ["--calibration_table", str(td / "s_cold" / "cali_table")]
            for v in ("grad_screen", "leave_one_out"):
                r[v] = run_job(model, images, args.images, args.inference, td / f"{v}_{phase}", cache,
                               ("--variant", v, *table))
            r["auto_n_3_steps"] = run_job(model, images, args.images, args.inference, td / f"a_{phase}", cache,
                                          ("--variant", "auto_n", "--max_float_layers", "3", *table))
            for name, x in r.items():
                print(f"{phase} {name}: search {x['search_s']} s, job {x['wall_s']} s, {x['n_evaluations']} exact "
                      f"evaluations, {x['compile']['executables']} executables, {x['compile'].get('calls')} calls, "
                      f"compile {x['compile']['compile_s']} s")
    for phase in ("cold", "warm"):
        r = res[phase]
        res[f"ratio_{phase}"] = {
            "grad_screen_over_sensitive_search": r["grad_screen"]["search_s"] / r["sensitive"]["search_s"],
            "grad_screen_over_leave_one_out_search": r["grad_screen"]["search_s"] / r["leave_one_out"]["search_s"],
            "grad_screen_over_sensitive_job": r["grad_screen"]["wall_s"] / r["sensitive"]["wall_s"],
        }
        a = r["auto_n_3_steps"]
        res[f"auto_n_per_step_{phase}"] = {"walks": a["counts"]["walks"], "search_s_per_step": a["search_s"] / 3,
                                           "calls": a["compile"].get("calls")}
        print(f"{phase}: grad_screen / sensitive search = {res[f'ratio_{phase}']['grad_screen_over_sensitive_search']:.2f} "
              f"(bar 0.3); / leave_one_out = {res[f'ratio_{phase}']['grad_screen_over_leave_one_out_search']:.2f}")
    res["machine"] = machine()
    out = write("variants", res)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
