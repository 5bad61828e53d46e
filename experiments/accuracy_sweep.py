"""Accuracy sweep: held-out similarity and labelled top-1 against the number of float layers, per layer order.

    python experiments/accuracy_sweep.py [--models mnist_mbv2,efficientnet_lite0] [--work DIR] [--out DIR]
                                        (config: configs/accuracy_sweep.json)

Per model, ``qsens search`` (TPU-MLIR's ``run_sensitive_layer``) runs once with the config's seed (1684):
``images`` (100) calibration images and the first ``inference`` (30) images of the same seeded shuffle as
search images, ``--max_float_layers max_k``.  It writes the original (KL) table ``cali_table``, the new table
and the ranked qtable.  Then, for every *order* of layers and every k = 0..``max_k``, the configuration "the
first k layers of the order in float, every other op INT8, with the order's table" is scored exactly (the
bit-exact BM1684 INT8 simulation against FP32, :class:`experiments.common.Evaluator`) on images the search
never scored:

* ``held_out``: similarity (TPU-MLIR's 0.5+0.5cos, mean over images), plain cosine, top-1 agreement with
  FP32.  efficientnet_lite0: the other 70 images of ``images100/``'s seeded shuffle (calibration images, never
  search images; 67 have labels, kept as ``held_out_labelled``); mnist_mbv2: the 1,000 digits of
  ``mnist_test/`` (never calibration or search images).
* ``labelled``: top-1/top-5 with percentile-bootstrap 95 % intervals (``n_boot`` resamples, seed = the
  config's seed).  efficientnet_lite0: the 25 labelled photos of ``images/`` (a sample, never an ImageNet
  accuracy); mnist_mbv2: the same 1,000 ``mnist_test/`` digits.

Orders (``kind``; ``table``: the calibration table the order is scored with):

* ``sensitive (new table)`` / ``sensitive (original table)``: the search's qtable order with its new table /
  with the original KL table (``sensitive``);
* ``random_i`` (i < ``n_random``): ``numpy.random.default_rng(seed + i).permutation`` of the INT8-capable ops
  (the ops of the search's ``search.json``, graph order), ``first_n`` (graph order) and ``last_n`` (reverse
  graph order), all with the ``baseline_table`` (the original table: the variants' table; ``baseline``);
* every tool of ``results/compare_variants/<model>.json`` that has an ``order`` (``variant``), when that file
  exists: ``auto_n (sensitive table)`` with the new table, every other one with the original table (the table
  those variants searched with; threshold_grid / threshold_optax were scored there with their own tuned table,
  which that JSON does not keep, so here their order is scored on the original table).  The sensitive entries
  of that file are not re-scored (they are ours); whether its sensitive order equals ours is recorded.

For each order: the curves over k, and the first k whose held-out similarity exceeds each of ``targets``.
Identical configurations are scored once (e.g. k = 0 of every order with the same table).  Writes
``<out>/<model>.json``, ``<out>/summary.md`` and ``<out>/accuracy_sweep.png``; ``timings`` are the only
part a re-run with the same seeds may change.  A killed run resumes its qsens search with the same ``--work``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import qsens  # noqa: F401  (first: hostmem's malloc policy)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.common import (  # noqa: E402
    RESULTS,
    Evaluator,
    driver_args,
    model_folders,
    qtable_ops,
    run_models,
    sensitive_search,
)

EXPERIMENT = "accuracy_sweep"
#: compare_variants tools that are the sensitive search itself (not re-scored; checked against ours)
SENSITIVE_TOOLS = ("sensitive", "sensitive (base table)")
#: compare_variants tools whose order was searched on the sensitive search's new table
NEW_TABLE_TOOLS = ("auto_n (sensitive table)",)


# ------------------------------------------------------------------------------------------------ pure helpers
def random_orders(ops: list[str], n: int, seed: int, k: int) -> dict[str, list[str]]:
    """``random_i``: the first ``k`` ops of ``numpy.random.default_rng(seed + i).permutation(ops)``, i < n."""
    import numpy as np

    return {f"random_{i}": [str(o) for o in np.random.default_rng(seed + i).permutation(ops)[:k]] for i in range(n)}


def first_n(ops: list[str], k: int) -> list[str]:
    """The first ``k`` ops in graph order."""
    return list(ops[:k])


def last_n(ops: list[str], k: int) -> list[str]:
    """The last ``k`` ops, last first (reverse graph order)."""
    return list(ops[::-1][:k])


def variant_orders(cv: dict, k: int) -> dict[str, dict]:
    """``{tool: {"order", "table"}}`` of the compare_variants result ``cv``: the tools with an order, not the
    sensitive ones; the table is ``new`` for the tools that searched on the sensitive table, else
    ``original``."""
    out = {}
    for name, t in cv.get("tools", {}).items():
        if "order" not in t or name in SENSITIVE_TOOLS:
            continue
        out[name] = {"order": list(t["order"][:k]), "table": "new" if name in NEW_TABLE_TOOLS else "original"}
    return out


def first_k_above(curve: list[float], target: float) -> int | None:
    """The first k with ``curve[k] > target`` (None: never within the curve)."""
    return next((k for k, s in enumerate(curve) if s > target), None)


def build_orders(qtable: list[str], ops: list[str], cfg: dict, cv: dict | None) -> dict[str, dict]:
    """Every order of the sweep: ``{name: {"kind", "table", "order"}}`` (orders cut at ``max_k``)."""
    k, bt = cfg["max_k"], cfg["baseline_table"]
    orders = {"sensitive (new table)": {"kind": "sensitive", "table": "new", "order": list(qtable[:k])},
              "sensitive (original table)": {"kind": "sensitive", "table": "original", "order": list(qtable[:k])}}
    for name, o in random_orders(ops, cfg["n_random"], cfg["seed"], k).items():
        orders[name] = {"kind": "baseline", "table": bt, "order": o}
    orders["first_n"] = {"kind": "baseline", "table": bt, "order": first_n(ops, k)}
    orders["last_n"] = {"kind": "baseline", "table": bt, "order": last_n(ops, k)}
    for name, v in (variant_orders(cv, k) if cv else {}).items():
        orders[name] = {"kind": "variant", **v}
    return orders


# ------------------------------------------------------------------------------------------------ the run
def run_model(key: str, cfg: dict, work: Path) -> dict:
    from qsens.data.dataset import select_files
    from qsens.zoo import zoo_path

    search_set, held_set, lab_set = model_folders(key)
    lab_set = None if lab_set == held_set else lab_set  # labelled = the held-out images themselves
    model = str(zoo_path(f"{key}.onnx"))
    folder = str(zoo_path(search_set))
    t0 = time.perf_counter()
    d, wall = sensitive_search(model, folder, cfg, work, cfg["max_k"])
    sj = json.loads((d / "search.json").read_text())
    qtable = qtable_ops(d / "qtable")
    ops = [o["op"] for o in sj["ops"]]
    cv_path = RESULTS / "compare_variants" / f"{key}.json"
    cv = json.loads(cv_path.read_text()) if cv_path.exists() else None
    orders = build_orders(qtable, ops, cfg, cv)

    pool = select_files(folder, input_num=0, seed=cfg["seed"])
    held = pool[cfg["inference"]:] if held_set is None else select_files(str(zoo_path(held_set)), input_num=0)
    sets = {"held_out": held}
    if lab_set is not None:
        sets["labelled"] = select_files(str(zoo_path(lab_set)), input_num=0)
    lab_key = "labelled" if lab_set is not None else "held_out"
    ev = Evaluator(model, sets, n_boot=cfg["n_boot"], boot_seed=cfg["seed"])
    assert ops == [o for o in ev.graph.op_names if o in set(ops)], "search.json ops are not in graph order"
    tables = {"original": d / "cali_table", "new": d / "new_cali_table.txt"}
    cache: dict = {}
    t_eval = time.perf_counter()

    def score(table: str, fl: list[str], which: str) -> dict:
        ck = (table, frozenset(fl), which)
        if ck not in cache:
            cache[ck] = ev.evaluate(tables[table], fl, which, ci=True)
        return cache[ck]

    for name, o in orders.items():
        kmax = len(o["order"])
        held_r = [score(o["table"], o["order"][:k], "held_out") for k in range(kmax + 1)]
        lab_r = [score(o["table"], o["order"][:k], lab_key).get("labelled") for k in range(kmax + 1)]
        o["held_out"] = {m: [r.get(m) for r in held_r] for m in ("similarity", "cosine", "top1_agreement")}
        if lab_r[0] is not None:
            o["labelled"] = {m: [r[m] for r in lab_r] for m in ("top1", "top1_ci95", "top5", "top5_ci95")}
        if lab_set is not None and held_r[0].get("labelled") is not None:
            o["held_out_labelled"] = {m: [r["labelled"][m] for r in held_r] for m in ("top1", "top1_ci95")}
        o["first_k_above"] = {str(t): first_k_above(o["held_out"]["similarity"], t) for t in cfg["targets"]}
        print(f"{key} {name}: held-out similarity "
              f"{' '.join(f'{s:.5f}' for s in o['held_out']['similarity'])}", flush=True)
    eval_s = time.perf_counter() - t_eval

    checks: dict = {"our_int8_held_out_similarity": orders["sensitive (original table)"]["held_out"]["similarity"][0]}
    if cv is not None:
        checks["compare_variants_sensitive_order_equal"] = cv["tools"]["sensitive"]["order"][: cfg["max_k"]] == \
            qtable[: cfg["max_k"]]
        ho = cv.get("int8", {}).get("held_out", {}).get("similarity")
        if ho is not None:  # compare_variants' held-out images are ours (the same folder / the same shuffle)
            checks["compare_variants_int8_held_out_similarity"] = ho
    lab_files = sets[lab_key]
    from qsens.search.workflows import file_sha

    return {
        "model": key,
        "model_sha256": file_sha(model),
        "data": {"search": search_set, "calibration_images": cfg["images"], "search_images": cfg["inference"],
                 "held_out": held_set or f"{search_set} minus the search images", "held_out_n": len(held),
                 "labelled": lab_set or held_set, "labelled_n": sum(v is not None for v in ev.labels[lab_key] or []),
                 "labelled_files_n": len(lab_files)},
        "ops_n": len(ops),
        "ops": ops,
        "qtable": qtable,
        "variants": {"source": str(cv_path.relative_to(ROOT)), "exists": cv is not None,
                     "taken": [n for n, o in orders.items() if o["kind"] == "variant"],
                     "note": ("variant orders from compare_variants; 'auto_n (sensitive table)' scored with the new "
                              "table, the others with the original table")
                     if cv is not None else "compare_variants JSON absent for this model: sensitive and baselines only"},
        "fp32": {"held_out": ev.fp32(tables["original"], "held_out", ci=True),
                 "labelled": ev.fp32(tables["original"], lab_key, ci=True).get("labelled")},
        "n_configurations_scored": len({(t, f) for t, f, _ in cache}),
        "orders": orders,
        "checks": checks,
        "timings": {"search_wall_s": wall, "evaluate_s": eval_s, "total_s": time.perf_counter() - t0},
    }


# ------------------------------------------------------------------------------------------------ reporting
def _k(v, kmax: int) -> str:
    return str(v) if v is not None else f">{kmax}"


def random_mean(res: dict) -> dict | None:
    """The mean curves of the ``random_i`` orders (None without them)."""
    import numpy as np

    rs = [o for n, o in res["orders"].items() if n.startswith("random_")]
    if not rs:
        return None
    out = {"held_out": {"similarity": list(np.mean([o["held_out"]["similarity"] for o in rs], 0))}}
    if "labelled" in rs[0]:
        out["labelled"] = {"top1": list(np.mean([o["labelled"]["top1"] for o in rs], 0))}
    return out


def markdown(results: list[dict], cfg: dict) -> str:
    out = ["### Accuracy sweep: float layers k vs held-out similarity and labelled top-1, per order", "",
           "Held-out similarity = TPU-MLIR's 0.5+0.5cos against FP32 on images the search never scored; labelled "
           "top-1 in % (95 % bootstrap intervals in the JSON).  `k>t`: the first k whose held-out similarity "
           "exceeds t.", ""]
    targets, rk = cfg["targets"], cfg["report_k"]
    for res in results:
        dt = res["data"]
        kmax = max(len(o["order"]) for o in res["orders"].values())
        fl = res["fp32"]["labelled"]
        out += [f"#### {res['model']} (search: {dt['calibration_images']} calibration / {dt['search_images']} search "
                f"images of `{dt['search']}`; held-out {dt['held_out_n']}; labelled {dt['labelled_n']} of "
                f"`{dt['labelled']}`; FP32 labelled top-1 {100 * fl['top1']:.1f})", "",
                "| order | table | " + " | ".join(f"k>{t}" for t in targets) + " | sim @1 | sim @5 | sim @10 | "
                + " | ".join(f"top-1 @{k}" for k in rk) + " |",
                "|---|---|" + "---|" * (len(targets) + 3 + len(rk))]
        rows = list(res["orders"].items())
        rm = random_mean(res)
        if rm is not None:
            rm["table"] = next(o["table"] for n, o in rows if n.startswith("random_"))
            rm["first_k_above"] = {str(t): first_k_above(rm["held_out"]["similarity"], t) for t in targets}
            i = max(i for i, (n, _) in enumerate(rows) if n.startswith("random_"))
            rows.insert(i + 1, ("random (mean of the random orders)", rm))
        for name, o in rows:
            sim = o["held_out"]["similarity"]
            top1 = o.get("labelled", {}).get("top1")
            s_at = " | ".join(f"{sim[k]:.5f}" if k < len(sim) else "-" for k in (1, 5, 10))
            t_at = " | ".join(f"{100 * top1[k]:.1f}" if top1 and k < len(top1) else "-" for k in rk)
            out.append(f"| {name} | {o['table']} | " + " | ".join(_k(o["first_k_above"][str(t)], kmax) for t in targets)
                       + f" | {s_at} | {t_at} |")
        lab0 = res["orders"]["sensitive (original table)"].get("labelled")
        if lab0:
            lo, hi = lab0["top1_ci95"][0]
            out.append("")
            out.append(f"95 % interval of labelled top-1 at k=0 (all INT8, original table): [{100 * lo:.1f}, "
                       f"{100 * hi:.1f}] on {dt['labelled_n']} images: differences between orders inside that "
                       "width are not resolved.")
        v = res["variants"]
        out.append("")
        out.append(f"Variant orders: {', '.join(v['taken']) if v['taken'] else 'none'} ({v['note']}).  "
                   f"Sensitive qtable: {', '.join(res['qtable'])}.")
        out.append("")
    return "\n".join(out)


STYLE = {"sensitive": dict(lw=2.2, ls="-"), "baseline": dict(lw=1.0, ls="--"), "variant": dict(lw=0.9, ls=":")}


def plot(results: list[dict], path: Path, targets=()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.4 * len(results)), squeeze=False)
    for row, res in zip(axes, results):
        for name, o in res["orders"].items():
            st = dict(STYLE[o["kind"]], marker="o", ms=2.5)
            if o["kind"] == "baseline":
                st["color"] = "gray" if name.startswith("random") else ("tab:brown" if name == "first_n" else "k")
            loss = [1 - s for s in o["held_out"]["similarity"]]
            (line,) = row[0].plot(range(len(loss)), loss, label=name, **st)
            if "labelled" in o:
                row[1].plot(range(len(o["labelled"]["top1"])), [100 * v for v in o["labelled"]["top1"]],
                            color=line.get_color(), label=name, **{k: v for k, v in st.items() if k != "color"})
        row[0].set_title(f"{res['model']}: held-out 1 - similarity ({res['data']['held_out_n']} images)", fontsize=9)
        row[0].set_xlabel("float layers k")
        row[0].set_yscale("log")
        lo, hi = row[0].get_ylim()
        for t in targets:
            if lo <= 1 - t <= hi:  # the targets within the curves' range
                row[0].axhline(1 - t, color="gray", lw=0.6, ls=(0, (1, 3)))
                row[0].annotate(f"{t}", (0, 1 - t), fontsize=6, color="gray", va="bottom")
        row[0].set_ylim(lo, hi)
        row[0].set_ylabel("1 - similarity (0.5+0.5cos), log scale")
        row[1].set_title(f"{res['model']}: labelled top-1 ({res['data']['labelled_n']} labelled images of "
                         f"{res['data']['labelled']}/)", fontsize=9)
        fp = 100 * res["fp32"]["labelled"]["top1"]
        row[1].axhline(fp, color="k", lw=0.8)
        row[1].annotate("FP32", (0, fp), fontsize=7, va="bottom")
        row[1].set_xlabel("float layers k")
        row[1].set_ylabel("top-1 %")
        row[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    cfg, out, work = driver_args(EXPERIMENT, __doc__, argv)
    results = run_models(EXPERIMENT, cfg, out, work, run_model)
    (out / "summary.md").write_text(markdown(results, cfg))
    plot(results, out / f"{EXPERIMENT}.png", cfg["targets"])
    print(markdown(results, cfg), flush=True)


if __name__ == "__main__":
    main()
