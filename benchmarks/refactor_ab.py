"""A/B: the whole `qsens search` job of two qsens trees, interleaved in one run (same machine, same minutes).

    python benchmarks/refactor_ab.py --old 0bb63c9 [--rounds 3 --images 100 --inference 30] [--job search_qtable]

``--old`` is a commit checked out into a temporary git worktree; ``--new`` (default: this working tree).  Each
round runs the old and the new job (order alternating) as fresh processes on a warm JAX compilation cache
(one cold run of each first, not timed), on EfficientNet-Lite0 with ``qsens demo``'s flags.  Prints the
median wall time and search compute of each and their ratio, checks the qtable / new_cali_table.txt are
byte-identical, and writes benchmarks/results/refactor_ab_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, search_job_cmd, write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def job_cmd(kind: str, model, images, n_img, n_inf, out_dir: Path) -> tuple[list[str], str]:
    """The process of one job and the JSON it leaves: ``search`` (the demo job), ``search_qtable`` (``qsens
    calibrate --search search_qtable``, TPU-MLIR 1.30.2's defaults) or ``calibrate`` (plain ``qsens calibrate``:
    run_calibration's flow, v2 histograms, KL, tune_num 5; no JSON: its printed seconds)."""
    if kind == "search":
        return search_job_cmd(model, images, n_img, n_inf, out_dir), "search.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "calibrate":
        return ([sys.executable, "-m", "qsens", "calibrate", str(model), "--dataset", str(images), "--input_num",
                 str(n_img), "-o", str(out_dir / "cali_table"), "-q"], None)
    return ([sys.executable, "-m", "qsens", "calibrate", str(model), "--dataset", str(images), "--input_num",
             str(n_img), "--inference_num", str(n_inf), "--search", "search_qtable", "--quantize_table",
             str(out_dir / "qtable"), "-o", str(out_dir / "cali_table"), "-q"], "search_qtable.json")


def job(tree: Path, model, images, n_img, n_inf, out_dir: Path, cache: Path, kind: str = "search") -> dict:
    env = dict(os.environ, QSENS_JAX_CACHE=str(cache), SOURCE_DATE_EPOCH="1700000000", PYTHONPATH=str(tree))
    cmd, result = job_cmd(kind, model, images, n_img, n_inf, out_dir)
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=str(tree), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)  # -q: little output, the pipes cannot fill
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"job failed in {tree}: {p.stderr.read()[-3000:]}")
    if result is None:  # calibrate: "calibrated N tensors on M samples (...) in X s; wrote ..."
        import re

        secs = float(re.search(r" in ([0-9.]+) s;", p.stdout.read()).group(1))
        res = {"timings": {"search_s": secs, "calibration_s": secs}, "float_layers": []}
    else:
        res = json.loads((out_dir / result).read_text())
    if kind == "search_qtable":  # its JSON has the whole search's seconds, no per-phase timings
        res["timings"] = {"search_s": res["seconds"]}
    names = [n for n in ("qtable", "new_cali_table.txt") if (out_dir / n).exists()]
    names += sorted(f.name for f in out_dir.glob("cali_table*"))
    files = {n: (out_dir / n).read_bytes() for n in names}  # SOURCE_DATE_EPOCH fixes the tables' time line
    cpu = ru.ru_utime + ru.ru_stime
    return {"wall_s": wall, "search_s": res["timings"]["search_s"], "files": files,
            "float_layers": res["float_layers"], "cpu_s": cpu, "cores_used": cpu / wall,
            "peak_rss_mb": ru.ru_maxrss / 1024,  # the job process (Linux: KB)
            # written by trees after ce6c4a3 (None before): the calibration phase and each phase's cores
            "calibration_s": res["timings"].get("calibration_s"),
            "calibration_cores": res["timings"].get("calibration_cores"),
            "search_cores": res["timings"].get("search_cores")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="commit of the baseline tree")
    ap.add_argument("--new", default=str(REPO), help="tree to compare (default: this working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--inference", type=int, default=30)
    ap.add_argument("--name", default="refactor_ab", help="results file stem (benchmarks/results/<name>_<device>.json)")
    ap.add_argument("--what", default="", help="what changed between the trees (written into the JSON)")
    ap.add_argument("--job", choices=("search", "search_qtable", "calibrate"), default="search",
                    help="the qsens search demo job (default), calibrate --search search_qtable, or plain calibrate "
                         "(its 'search' column is then the calibration's own seconds)")
    args = ap.parse_args(argv)
    from qsens.zoo import zoo_path

    model, images = zoo_path("efficientnet_lite0.onnx"), zoo_path("images100")
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        old = td / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.old], check=True,
                       capture_output=True)
        try:
            trees = {"old": old, "new": Path(args.new)}
            caches = {k: td / f"cache_{k}" for k in trees}
            for k, tree in trees.items():  # cold runs fill each tree's compilation cache (not timed)
                job(tree, model, images, args.images, args.inference, td / f"{k}_cold", caches[k], args.job)
            runs = {k: [] for k in trees}
            for r in range(args.rounds):
                for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    runs[k].append(job(trees[k], model, images, args.images, args.inference, td / f"{k}_{r}",
                                       caches[k], args.job))
                    print(f"round {r} {k}: whole job {runs[k][-1]['wall_s']:.1f} s, search {runs[k][-1]['search_s']:.1f} s",
                          flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
    same = all(a["files"] == b["files"] for a in runs["old"] for b in runs["new"])
    keys = ("wall_s", "search_s", "cores_used", "peak_rss_mb")
    med = {k: {m: statistics.median(x[m] for x in v) for m in keys} for k, v in runs.items()}
    ratio = {m: med["new"][m] / med["old"][m] for m in keys}
    print(f"median whole job: old {med['old']['wall_s']:.1f} s, new {med['new']['wall_s']:.1f} s "
          f"(new/old {ratio['wall_s']:.3f}); search compute: old {med['old']['search_s']:.1f} s, new "
          f"{med['new']['search_s']:.1f} s (new/old {ratio['search_s']:.3f}); cores used old "
          f"{med['old']['cores_used']:.2f}, new {med['new']['cores_used']:.2f}; peak RSS old {med['old']['peak_rss_mb']:.0f} MB, "
          f"new {med['new']['peak_rss_mb']:.0f} MB; qtable, new_cali_table.txt and "
          f"every cali_table* byte-identical: {same}")
    out = write(args.name, {"what": args.what, "load_average_end": os.getloadavg(),
        "benchmark": {"search": "qsens search (Lite0, demo flags)",
                      "search_qtable": "qsens calibrate --search search_qtable (Lite0, TPU-MLIR 1.30.2's defaults)",
                      "calibrate": "qsens calibrate (Lite0, run_calibration's defaults: v2, KL, tune_num 5)"}[args.job]
        + ", old vs new tree, warm cache, interleaved rounds",
        "old": args.old, "new": args.new, "rounds": args.rounds, "images": args.images, "inference": args.inference,
        "runs": {k: [{m: x[m] for m in keys + ("cpu_s", "calibration_s", "calibration_cores", "search_cores")}
                     for x in v] for k, v in runs.items()},
        "median": med, "new_over_old": ratio, "outputs_byte_identical": same,
        "files_compared": sorted(runs["new"][0]["files"]),
        "float_layers": runs["new"][0]["float_layers"], "machine": machine(),
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
