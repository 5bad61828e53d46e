"""Ranking stability: how much the sensitive search's per-op ranking depends on which images it is scored on.

    python experiments/ranking_stability.py [--models mnist_mbv2,efficientnet_lite0] [--work DIR] [--out DIR]
                                           (config: configs/ranking_stability.json)

Per model, ``qsens search`` (TPU-MLIR's ``run_sensitive_layer``) runs once: ``images`` (100) calibration
images, the first ``inference`` (30) of the same seeded shuffle (``select_files(dataset, seed=1684)``) as
search images.  Its new table (``new_cali_table.txt``: each op's chosen KL/MAX/Percentile threshold) is then
fixed, and for every op the search scores (``search.json``'s ops, graph order) its *leave-one-in* similarity
is computed exactly per image: only that op INT8, every other op float, TPU-MLIR's 0.5+0.5cos against FP32.
An op's loss on a set of images is 1 - the mean of its per-image similarities; that is the quantity the
search ranks by (its per-op ``best_loss``; the top-N ranking of ``analysis_sensitive_layers``).  Ranking with
one fixed table keeps every number exact and cheap: each op runs once on the union of the images below
(per-image similarities do not depend on which other images share the batch), and every subset, prefix and
bootstrap resample is a mean over columns of that matrix.  (The search itself picks each op's threshold on
its 30 images; re-picking thresholds per subset is not done here.)

Image sets, all from the model's seeded shuffle ``pool``:

* ``search``: ``pool[:30]``, the search's own images (its ``best_loss`` is reproduced there; the deviation is
  recorded in ``check``);
* disjoint subsets ``A``, ``B``, ... of ``subset_size`` (30) images from ``subset_start``: mnist_mbv2
  (``mnist_train/``, 500 images): ``pool[100:130]``, ``pool[130:160]``, ``pool[160:190]`` (never calibration
  images); efficientnet_lite0 (``images100/``, 100 images, all calibration images): ``pool[30:60]`` and
  ``pool[60:90]`` (not search images; with ``search`` three disjoint sets);
* nested prefixes ``pool[:10]``, ``pool[:30]``, ``pool[:100]``: the images ``--inference_num 10/30/100`` would
  score (calibration images);
* mnist_mbv2 only, ``reference``: ``pool[100:500]``, the 400 images beyond calibration (the most precise
  ranking available; every subset and prefix is compared with it).

Computed: (a) per op, its loss on ``search`` with a percentile-bootstrap 95 % interval (``n_boot`` resamples of
the 30 images with ``numpy.random.default_rng(seed)``, the same resamples for every op, so per resample the
whole ranking is redrawn: also the probability that an op is the top-1 / in the chosen top-5 and the
distribution of Kendall tau against the full-sample ranking); (b) Kendall tau-b
(:func:`qsens.search.variants.kendall_tau`) between the loss vectors of every pair of disjoint subsets, of
nested prefixes, and against the reference; (c) the float layers TPU-MLIR's rule chooses from each ranking
(``analysis_sensitive_layers`` with ``--max_float_layers`` 1 and 5, Conv/Scale partners included) and, per
pair, their overlap and Jaccard index, and how many distinct choices the sets give.  Writes
``<out>/<model>.json``, ``<out>/summary.md`` and ``<out>/ranking_stability.png`` (per-op loss on the search
images with its 95 % interval, sorted); ``timings`` are the only part a re-run with the same seeds changes.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

import qsens  # noqa: F401  (first: hostmem's malloc policy)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.common import (  # noqa: E402
    Evaluator,
    driver_args,
    run_models,
    sensitive_search,
)

EXPERIMENT = "ranking_stability"
#: per-op losses are written in parts per million (loss * 1e6): the JSON's 6-decimal rounding then keeps them
PPM = 1e6


# ------------------------------------------------------------------------------------------------ pure helpers
def overlap(a, b) -> dict:
    """``{"overlap": |a & b|, "jaccard": |a & b| / |a | b|}`` of two collections (Jaccard 1.0 when both are
    empty)."""
    a, b = set(a), set(b)
    u = a | b
    return {"overlap": len(a & b), "jaccard": len(a & b) / len(u) if u else 1.0}


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(rows, n_boot)`` means of ``values`` ``(rows, n)`` over ``n_boot`` resamples of its columns with
    replacement, from ``numpy.random.default_rng(seed)`` (the same resamples for every row; one row draws
    exactly what :func:`qsens.metrics.bootstrap_ci` draws)."""
    v = np.atleast_2d(np.asarray(values, np.float64))
    idx = np.random.default_rng(seed).integers(0, v.shape[1], size=(n_boot, v.shape[1]))
    return v[:, idx].mean(axis=-1)


def percentile_ci(means: np.ndarray, level: float = 0.95) -> np.ndarray:
    """``(rows, 2)``: the ``(1-level)/2`` and ``(1+level)/2`` quantiles of each row of bootstrap means."""
    return np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=-1).T


def chosen(ops: list[str], types: dict, losses, k: int, graph=None) -> list[str]:
    """The float layers TPU-MLIR's ``analysis_sensitive_layers`` picks for ``--max_float_layers k`` from these
    per-op losses (descending loss, ties in op order, Conv/Scale partners added)."""
    from qsens.search.selectors import Sensitivity, analysis_sensitive_layers

    return analysis_sensitive_layers([Sensitivity(o, float(x), types[o]) for o, x in zip(ops, losses)], k, graph)[0]


def pairwise(named: dict, fn) -> dict:
    """``{"a vs b": fn(named[a], named[b])}`` over the pairs of ``named`` in insertion order."""
    return {f"{a} vs {b}": fn(named[a], named[b]) for a, b in itertools.combinations(named, 2)}


def tau_stats(taus: dict) -> dict:
    v = list(taus.values())
    return {"pairs": taus, "min": min(v), "mean": float(np.mean(v)), "max": max(v)} if v else {"pairs": {}}


def choice_stats(choices: dict) -> dict:
    """Pairwise overlap/Jaccard of chosen layer lists, how many pairs agree exactly, distinct choices."""
    pairs = pairwise(choices, overlap)
    js = [p["jaccard"] for p in pairs.values()]
    return {"chosen": choices, "pairs": pairs, "identical_pairs": sum(j == 1.0 for j in js), "n_pairs": len(js),
            "mean_jaccard": float(np.mean(js)) if js else None, "min_jaccard": min(js) if js else None,
            "mean_overlap": float(np.mean([p["overlap"] for p in pairs.values()])) if js else None,
            "distinct": len({frozenset(c) for c in choices.values()})}


def image_sets(dcfg: dict, size: int, prefixes: list[int], inference: int, n_pool: int) -> dict:
    """``{"subsets": {name: [start, end]}, "prefixes": {str(n): [0, n]}, "reference": [start, end] | None}``:
    ``search`` = ``[0, inference]``, then ``n_subsets`` disjoint windows of ``size`` from ``subset_start``."""
    subsets = {"search": [0, inference]}
    for i in range(dcfg["n_subsets"]):
        s = dcfg["subset_start"] + i * size
        if s + size > n_pool:
            raise SystemExit(f"subset {i} [{s}, {s + size}) is beyond the {n_pool} images")
        subsets[chr(ord("A") + i)] = [s, s + size]
    ref = dcfg.get("reference")
    return {"subsets": subsets, "prefixes": {str(n): [0, min(n, n_pool)] for n in prefixes},
            "reference": [ref[0], min(ref[1], n_pool)] if ref else None}


# ------------------------------------------------------------------------------------------------ the run
def per_image_similarity(problem, ops: list[str]) -> np.ndarray:
    """``(ops, images)``: each op alone INT8 (the rest float) at the problem's table, per-image similarity."""
    from qsens.search.evaluators import Config, run_mixed

    return np.stack([problem.scorer.per_sample(run_mixed(problem, Config(frozenset({o}), problem.th0))) for o in ops])


def run_model(key: str, cfg: dict, work: Path) -> dict:
    from qsens.data.dataset import select_files
    from qsens.search.variants import kendall_tau
    from qsens.zoo import zoo_path

    dcfg = cfg["data"][key]
    model = str(zoo_path(f"{key}.onnx"))
    folder = str(zoo_path(dcfg["dataset"]))
    t0 = time.perf_counter()
    d, wall = sensitive_search(model, folder, cfg, work, cfg["max_k"])
    sj = json.loads((d / "search.json").read_text())
    ops = [o["op"] for o in sj["ops"]]
    types = {o["op"]: o["type"] for o in sj["ops"]}
    best = np.array([o["best_loss"] for o in sj["ops"]])

    pool = select_files(folder, input_num=0, seed=cfg["seed"])
    sets = image_sets(dcfg, cfg["subset_size"], cfg["prefixes"], cfg["inference"], len(pool))
    windows = [*sets["subsets"].values(), *sets["prefixes"].values()] + ([sets["reference"]] if sets["reference"] else [])
    n_used = max(e for _, e in windows)  # every window lies in pool[:n_used]
    ev = Evaluator(model, {"pool": pool[:n_used]})
    t1 = time.perf_counter()
    sim = per_image_similarity(ev.problem(d / "new_cali_table.txt", "pool"), ops)
    sim_s = time.perf_counter() - t1
    graph = ev.graph

    def loss(w) -> np.ndarray:
        return 1.0 - sim[:, w[0]:w[1]].mean(axis=1)

    # (a) per-op loss on the search images, paired bootstrap
    s0, s1 = sets["subsets"]["search"]
    full = loss([s0, s1])
    boot = 1.0 - bootstrap_means(sim[:, s0:s1], cfg["n_boot"], cfg["seed"])  # (ops, n_boot)
    ci = percentile_ci(boot)
    kmax = max(cfg["top_k"])
    full_choice = {k: chosen(ops, types, full, k, graph) for k in cfg["top_k"]}
    in_top = {k: np.zeros(len(ops)) for k in cfg["top_k"]}
    boot_tau, boot_same = [], {k: [] for k in cfg["top_k"]}
    pos = {o: i for i, o in enumerate(ops)}
    for b in range(boot.shape[1]):
        boot_tau.append(kendall_tau(boot[:, b], full))
        for k in cfg["top_k"]:
            c = chosen(ops, types, boot[:, b], k, graph)
            in_top[k][[pos[o] for o in c]] += 1
            boot_same[k].append(overlap(c, full_choice[k])["jaccard"])
    order = sorted(range(len(ops)), key=lambda i: (-full[i], i))
    per_op = [{"op": ops[i], "type": types[ops[i]], "rank": r,
               "loss_ppm": PPM * float(full[i]), "ci95_ppm": [PPM * float(ci[i, 0]), PPM * float(ci[i, 1])],
               "search_best_loss_ppm": PPM * float(best[i]),
               **{f"p_chosen_top{k}": float(in_top[k][i] / boot.shape[1]) for k in cfg["top_k"]}}
              for r, i in enumerate(order)]
    bt = np.asarray(boot_tau)
    bootstrap = {"n_boot": cfg["n_boot"], "seed": cfg["seed"], "images": "search",
                 "tau_vs_full": {"median": float(np.median(bt)), "ci95": [float(x) for x in np.quantile(bt, [0.025, 0.975])]},
                 **{f"top{k}_identical_fraction": float(np.mean(np.asarray(boot_same[k]) == 1.0)) for k in cfg["top_k"]},
                 **{f"top{k}_mean_jaccard_vs_full": float(np.mean(boot_same[k])) for k in cfg["top_k"]}}

    # (b) Kendall tau, (c) chosen layers: disjoint subsets, nested prefixes, reference
    groups = {"subsets": sets["subsets"], "prefixes": sets["prefixes"]}
    losses = {g: {n: loss(w) for n, w in ws.items()} for g, ws in groups.items()}
    ref = loss(sets["reference"]) if sets["reference"] else None
    tau, choices = {}, {}
    for g, ls in losses.items():
        tau[g] = tau_stats(pairwise(ls, kendall_tau))
        choices[g] = {str(k): choice_stats({n: chosen(ops, types, x, k, graph) for n, x in ls.items()})
                      for k in cfg["top_k"]}
    if ref is not None:
        named = {**{f"subset {n}": x for n, x in losses["subsets"].items()},
                 **{f"prefix {n}": x for n, x in losses["prefixes"].items()}}
        tau["vs_reference"] = {n: kendall_tau(x, ref) for n, x in named.items()}
        rc = {k: chosen(ops, types, ref, k, graph) for k in cfg["top_k"]}
        choices["vs_reference"] = {str(k): {"reference": rc[k], **{n: overlap(chosen(ops, types, x, k, graph), rc[k])
                                                                   for n, x in named.items()}} for k in cfg["top_k"]}
    qtable = [ln.split()[0] for ln in (d / "qtable").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    check = {"max_abs_diff_search_loss_vs_best_loss": float(np.max(np.abs(full - best))),
             "tau_search_loss_vs_best_loss": kendall_tau(full, best),
             "chosen_top10_equals_qtable": chosen(ops, types, full, cfg["max_k"], graph) == qtable,
             "note": "the search scored best_loss while it chose each op's threshold; here every op runs at the "
                     "fixed new table (a difference of 0: the same numbers)"}
    from qsens.search.workflows import file_sha

    return {
        "model": key,
        "model_sha256": file_sha(model),
        "data": {"dataset": dcfg["dataset"], "pool_n": len(pool), "images_used": n_used,
                 "calibration_images": cfg["images"], "search_images": cfg["inference"], **sets,
                 "note": ("windows [start, end) of the seeded shuffle of the dataset (select_files, seed); "
                          f"calibration images are pool[:{cfg['images']}]")},
        "ops_n": len(ops),
        "table": "new_cali_table.txt of the sensitive search (fixed)",
        "loss": "1 - mean over images of the 0.5+0.5cos similarity with only that op INT8; per_op values in ppm "
                "(loss * 1e6)",
        "check": check,
        "qtable": qtable,
        "per_op": per_op,
        "bootstrap": bootstrap,
        "kendall_tau": tau,
        "chosen": choices,
        "top_k_max": kmax,
        "timings": {"search_wall_s": wall, "per_image_similarity_s": sim_s, "total_s": time.perf_counter() - t0},
    }


# ------------------------------------------------------------------------------------------------ reporting
def _f(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(results: list[dict]) -> str:
    out = ["### Ranking stability of the sensitive search's per-op loss (leave-one-in at the fixed new table)", "",
           "Kendall tau-b between per-op loss vectors; chosen layers by TPU-MLIR's top-N rule "
           "(`analysis_sensitive_layers`, 1 and 5 layers).  Subsets: `search` = the 30 search images, A, B, ... "
           "disjoint sets of 30; prefixes: the first 10 / 30 / 100 images of the shuffle.", "",
           "| model | comparison | pairs | tau min / mean / max | top-1 identical pairs | top-5 identical pairs | "
           "top-5 Jaccard mean (min) | distinct top-5 choices |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for g in ("subsets", "prefixes"):
            t = res["kendall_tau"][g]
            c1, c5 = res["chosen"][g]["1"], res["chosen"][g]["5"]
            names = " / ".join(f"{n} {w[0]}:{w[1]}" for n, w in res["data"][g].items())
            out.append(f"| {res['model']} | {g} ({names}) | {c5['n_pairs']} | {_f(t['min'])} / {_f(t['mean'])} / "
                       f"{_f(t['max'])} | {c1['identical_pairs']}/{c1['n_pairs']} | {c5['identical_pairs']}/"
                       f"{c5['n_pairs']} | {_f(c5['mean_jaccard'], 2)} ({_f(c5['min_jaccard'], 2)}) | "
                       f"{c5['distinct']} |")
        b = res["bootstrap"]
        out.append(f"| {res['model']} | bootstrap of the search images vs all 30 ({b['n_boot']}) | - | median "
                   f"{_f(b['tau_vs_full']['median'])} [{_f(b['tau_vs_full']['ci95'][0])}, "
                   f"{_f(b['tau_vs_full']['ci95'][1])}] | {100 * b['top1_identical_fraction']:.0f} % | "
                   f"{100 * b['top5_identical_fraction']:.0f} % | {_f(b['top5_mean_jaccard_vs_full'], 2)} | - |")
        if "vs_reference" in res["kendall_tau"]:
            r = res["kendall_tau"]["vs_reference"]
            ref = res["data"]["reference"]
            c5 = res["chosen"]["vs_reference"]["5"]
            out.append(f"| {res['model']} | vs reference {ref[0]}:{ref[1]} (" + ", ".join(
                f"{n} {_f(v)}" for n, v in r.items()) + ") | - | " + f"{_f(min(r.values()))} / "
                f"{_f(float(np.mean(list(r.values()))))} / {_f(max(r.values()))} | - | "
                f"{sum(v['jaccard'] == 1.0 for n, v in c5.items() if n != 'reference')}/{len(r)} | "
                f"{_f(float(np.mean([v['jaccard'] for n, v in c5.items() if n != 'reference'])), 2)} | - |")
    out.append("")
    for res in results:
        ck = res["check"]
        out += [f"#### {res['model']}: top 10 per-op losses on the 30 search images ({res['ops_n']} ops; 95 % "
                f"bootstrap intervals; P(chosen) over the resamples)", "",
                "| rank | op | type | loss | 95 % CI | P(top-1) | P(in top-5) |", "|---|---|---|---|---|---|---|"]
        for p in res["per_op"][:10]:
            lo, hi = p["ci95_ppm"]
            out.append(f"| {p['rank']} | {p['op']} | {p['type']} | {p['loss_ppm'] / PPM:.3g} | [{lo / PPM:.3g}, "
                       f"{hi / PPM:.3g}] | {p['p_chosen_top1']:.2f} | {p['p_chosen_top5']:.2f} |")
        out += ["", f"Check against the search's own `best_loss`: max |diff| {ck['max_abs_diff_search_loss_vs_best_loss']:.3g}, "
                f"tau {ck['tau_search_loss_vs_best_loss']:.3f}, top-10 choice equals its qtable: "
                f"{ck['chosen_top10_equals_qtable']}.", ""]
    return "\n".join(out)


def plot(results: list[dict], path: Path, top: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 4.2 * len(results)), squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        ps = res["per_op"][:top]
        x = np.arange(len(ps))
        y = np.array([max(p["loss_ppm"] / PPM, 1e-12) for p in ps])
        lo = np.array([max(p["ci95_ppm"][0] / PPM, 1e-12) for p in ps])
        hi = np.array([max(p["ci95_ppm"][1] / PPM, 1e-12) for p in ps])
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o", ms=3, capsize=2, lw=0.8)
        ax.scatter(x, [max(p["search_best_loss_ppm"] / PPM, 1e-12) for p in ps], marker="x", s=12, color="tab:red",
                   label="search.json best_loss", zorder=3)
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([p["op"] for p in ps], rotation=90, fontsize=6)
        ax.set_ylabel("leave-one-in loss (1 - similarity)")
        ax.set_title(f"{res['model']}: per-op loss on the 30 search images, 95 % bootstrap interval "
                     f"(top {len(ps)} of {res['ops_n']} ops; tau between disjoint subsets "
                     f"{res['kendall_tau']['subsets']['mean']:.2f} mean)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    cfg, out, work = driver_args(EXPERIMENT, __doc__, argv)
    results = run_models(EXPERIMENT, cfg, out, work, run_model)
    (out / "summary.md").write_text(markdown(results))
    plot(results, out / f"{EXPERIMENT}.png", cfg["plot_top"])
    print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
