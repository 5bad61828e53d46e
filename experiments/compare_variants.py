"""Every search variant and TPU-MLIR's searchers on the same models, images and table, scored the same way.

    python experiments/compare_variants.py [--models efficientnet_lite0,efficientnet_lite2,mtcnn_pnet,mtcnn_rnet,
                                            mtcnn_onet,mnist_mbv2] [--images 100] [--inference 30] [--max_k 10]
                                           [--seed 1684] [--out experiments/results/compare_variants]

Per model, each tool runs as its qsens verb in a fresh process (wall time is the process's), on the same
seeded selection of ``images100/``: ``--images`` calibration images, the first ``--inference`` of the same
shuffle score the search, and the other images of the folder are the *held-out* set.  The MNIST network
(``mnist_mbv2``, trained in the project) searches on ``mnist_train/`` and is held out on the 1,000 labelled
images of ``mnist_test/``.  All variants search
with the base table of the sensitive run (``cali_table``: run_calibration's KL table), so the comparison is on
the same table; ``auto_n (sensitive table)`` composes: greedy selection on the sensitive search's new table.

| tool | command |
|---|---|
| sensitive (TPU-MLIR ``run_sensitive_layer``) | ``qsens search`` (top-N order, its new table) |
| run_qtable (TPU-MLIR 1.23) | ``qsens qtable`` with the base table |
| search_qtable / fast_search (TPU-MLIR 1.30.2) | ``qsens calibrate --search ...`` |
| each variant | ``qsens search --variant NAME --calibration_table cali_table`` |

Then every outcome is scored exactly: the first k layers of its order (k = 0..max_k) float with its table,
on the search images and on the held-out images: similarity (0.5+0.5cos), plain cosine, top-1 agreement
with FP32, labelled top-1/top-5 where the zoo knows labels; the float layers each needs for 0.99 and 0.995;
Kendall tau of leave-one-out vs leave-one-in and of the gradient scores vs exact leave-one-out; exact
evaluations, executables, calls and times.  Writes ``<out>/<model>.json``, ``<out>/summary.json``,
``<out>/compare_variants.png`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import qsens  # noqa: F401  (first: hostmem's malloc policy)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.common (machine description), experiments.common
from experiments.common import Evaluator, model_folders, qtable_ops, run_qsens  # noqa: E402

VARIANTS = ("auto_n", "auto_n_ordered", "neighbour", "leave_one_out", "grad_screen", "threshold_grid",
            "threshold_optax", "cost_aware")
SHAPES = {"mtcnn_pnet": "[[1,3,48,48]]"}
MODELS = ("efficientnet_lite0", "efficientnet_lite2", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "mnist_mbv2")
TARGETS = (0.99, 0.995, 0.999)


def run_tools(model: str, key: str, a, work: Path, env) -> dict:
    """Run the searchers; returns {tool: {"table", "order" | "qtable", "wall_s", "json"}}."""
    from qsens.zoo import zoo_path

    images = str(zoo_path(model_folders(key)[0]))
    shape = ["--input_shapes", SHAPES[key]] if key in SHAPES else []
    data = ["--dataset", images, "--input_num", str(a.images), "--seed", str(a.seed), *shape]
    tools: dict[str, dict] = {}
    d = work / "sensitive"
    common = ["--inference_num", str(a.inference), "--expected_cos", "0.9999", "--max_float_layers", str(a.max_k), "-q"]
    wall = run_qsens(["search", model, *data, *common, "--out_dir", str(d)], env, work / "sensitive.log")
    sj = json.loads((d / "search.json").read_text())
    from qsens.search.selectors import Sensitivity, analysis_sensitive_layers

    from_json = [Sensitivity(o["op"], o["best_loss"], o["type"]) for o in sj["ops"]]
    tools["sensitive"] = {"table": d / "new_cali_table.txt", "order": qtable_ops(d / "qtable"), "wall_s": wall,
                          "json": sj, "scores": {s.name: s.loss for s in from_json}}
    tools["sensitive (base table)"] = {**tools["sensitive"], "table": d / "cali_table"}
    base = d / "cali_table"
    assert analysis_sensitive_layers(from_json, a.max_k)  # the order the qtable holds (partner rule included)
    for v in VARIANTS + ("auto_n@sensitive_table",):
        if v in a.skip:
            continue
        name, table = (v, base) if "@" not in v else ("auto_n", d / "new_cali_table.txt")
        out = work / v.replace("@", "_")
        extra = ["--top_k", str(a.top_k)] if name == "grad_screen" else []
        wall = run_qsens(["search", model, *data, *common, "--variant", name, "--calibration_table", str(table),
                    "--out_dir", str(out), *extra], env, work / f"{v}.log")
        vj = json.loads((out / "search.json").read_text())
        st = vj["state"]
        order = list(st.get("order") or vj["float_layers"])
        label = v if "@" not in v else "auto_n (sensitive table)"
        tools[label] = {"table": out / "new_cali_table.txt", "order": order, "wall_s": wall, "json": vj,
                        "chosen": vj["float_layers"]}
    q = work / "qtable"
    if "run_qtable" not in a.skip:
        wall = run_qsens(["qtable", model, "--dataset", images, "--input_num", str(a.inference), "--seed", str(a.seed),
                          *shape, "--calibration_table", str(base), "--expected_cos", "0.99", "--out_dir", str(q), "-q"],
                         env, work / "qtable.log")
        tools["run_qtable"] = {"table": base, "qtable": qtable_ops(q / "qtable"), "wall_s": wall}
    for mode in ("search_qtable", "fast_search"):
        if mode in a.skip:
            continue
        m = work / mode
        m.mkdir(exist_ok=True)
        wall = run_qsens(["calibrate", model, *data, "--inference_num", str(a.inference), "--search", mode,
                    "--expected_cos", "0.99", "--quantize_table", str(m / "qtable"), "-o", str(m / "cali_table"),
                    "-q"], env, work / f"{mode}.log")
        table = m / "new_cali_table.txt" if mode == "search_qtable" else m / "cali_table"
        table = table if table.exists() else m / "cali_table"
        tools[mode] = {"table": table, "qtable": qtable_ops(m / "qtable"), "wall_s": wall}
    return tools


def score(model: str, key: str, a, tools: dict) -> dict:
    import numpy as np

    from qsens.data.dataset import select_files
    from qsens.search.job import label_accuracy
    from qsens.search.variants import kendall_tau
    from qsens.zoo import zoo_path

    search_set, held_set, _ = model_folders(key)
    pool = select_files(str(zoo_path(search_set)), input_num=0, seed=a.seed)
    held = pool[a.inference:] if held_set is None else select_files(str(zoo_path(held_set)), input_num=0, seed=a.seed)
    sets = {"search": pool[: a.inference], "held_out": held}
    ev = Evaluator(model, sets, json.loads(SHAPES[key]) if key in SHAPES else None)
    labels = ev.labels
    problem, evaluate = ev.problem, ev.evaluate

    res = {"model": key, "images": a.images, "inference": a.inference, "held_out": len(sets["held_out"]),
           "seed": a.seed, "max_k": a.max_k, "tools": {}}
    for name, t in tools.items():
        r: dict = {"wall_s": round(t["wall_s"], 1), "table": Path(t["table"]).name}
        if "order" in t:
            order = t["order"][: a.max_k]
            r["order"] = order
            curve = {w: [evaluate(t["table"], order[:k], w) for k in range(len(order) + 1)] for w in sets}
            r["curve"] = {w: [c["similarity"] for c in cs] for w, cs in curve.items()}
            r["at"] = {str(k): {w: curve[w][k] for w in sets} for k in (1, 3, 5) if k <= len(order)}
            for tgt in TARGETS:
                k = next((k for k, s in enumerate(r["curve"]["search"]) if s > tgt), None)
                r[f"k_for_{tgt}"] = k
                r[f"held_out_at_k_for_{tgt}"] = r["curve"]["held_out"][k] if k is not None else None
        else:
            r["float_layers"] = t["qtable"]
            r["result"] = {w: evaluate(t["table"], t["qtable"], w) for w in sets}
        j = t.get("json")
        if j is not None:
            if name == "cost_aware":
                r["pareto"] = {"points": j["state"]["points"], "front": j["state"]["front"],
                               "budget_macs": j["state"]["budget_macs"]}
            if "counts" in j:  # a variant
                r["n_evaluations"] = j["summary"]["n_evaluations"]
                r["counts"] = j["counts"]
                r["search_s"] = round(j["timings"]["search_s"], 2)
                r["compile"] = j["timings"]["compile"]
                r["int8_new_table"] = j["summary"]["int8_new_table"]["similarity"]
            else:
                r["n_evaluations"] = j["n_candidates_evaluated"]
                r["search_s"] = round(j["timings"]["search_s"], 2)
                r["compile"] = j["timings"]["compile"]
        res["tools"][name] = r
    res["int8"] = {w: evaluate(tools["sensitive (base table)"]["table"], [], w) for w in sets}
    for w in sets:
        ref = np.asarray(next(iter(problem(tools["sensitive"]["table"], w).ref_outputs.values())))
        if labels[w] is not None and ref.ndim == 2 and ref.shape[1] > 1:
            res.setdefault("fp32_labelled", {})[w] = label_accuracy(ref, labels[w])
    if not {"leave_one_out", "grad_screen"} <= set(tools):  # a --merge run without them keeps the earlier figures
        return res
    # rank correlations (on the ops both rankings score)
    loo = tools["leave_one_out"]["json"]["state"]["scores"]
    lin = tools["sensitive"]["scores"]
    common = [o for o in loo if o in lin]
    res["kendall_tau"] = {"leave_one_out_vs_leave_one_in": kendall_tau([loo[o] for o in common],
                                                                       [lin[o] for o in common])}
    gs = tools["grad_screen"]["json"]["state"]["grad"]
    for sc in ("taylor", "fisher"):
        ops = [o for o in loo if o in gs[sc]]
        res["kendall_tau"][f"grad_{sc}_vs_leave_one_out"] = kendall_tau([gs[sc][o] for o in ops], [loo[o] for o in ops])
    n = min(5, a.max_k)
    res["overlap_top5"] = {
        "grad_screen_vs_leave_one_out": len(set(tools["grad_screen"]["order"][:n]) & set(tools["leave_one_out"]["order"][:n])),
        "leave_one_out_vs_sensitive": len(set(tools["leave_one_out"]["order"][:n]) & set(tools["sensitive"]["order"][:n])),
    }
    res["time_ratio"] = {
        "grad_screen_over_sensitive_search": res["tools"]["grad_screen"]["search_s"] / res["tools"]["sensitive"]["search_s"],
        "grad_screen_over_leave_one_out_search": res["tools"]["grad_screen"]["search_s"] / res["tools"]["leave_one_out"]["search_s"],
        "grad_screen_over_sensitive_wall": res["tools"]["grad_screen"]["wall_s"] / res["tools"]["sensitive"]["wall_s"],
    }
    return res


def merge(old: dict, new: dict) -> dict:
    """A ``--merge`` run's result folded into the model's earlier JSON: the tools this run added join the earlier
    ones.  Valid only if this run reproduces the earlier one: the sensitive search (rerun for its base table) must
    give the same curves on both image sets, else this raises."""
    for name in ("sensitive", "sensitive (base table)"):
        for w in ("search", "held_out"):
            a, b = old["tools"][name]["curve"][w], new["tools"][name]["curve"][w]
            if a != b:
                raise SystemExit(f"compare_variants --merge: {name} {w} curve {b} differs from the earlier run's {a}; "
                                 "rerun the model without --merge")
    out = dict(old)
    out["tools"] = {**old["tools"], **{k: v for k, v in new["tools"].items() if k not in old["tools"]}}
    runs = old.get("runs") or [{"git": old["machine"].get("git"), "tools": list(old["tools"]), "total_s": old["total_s"]}]
    out["runs"] = runs + [{"git": new["machine"].get("git"), "tools": [k for k in new["tools"] if k not in old["tools"]],
                           "total_s": new["total_s"], "sensitive_rerun_matches": True}]
    out["total_s"] = round(sum(r["total_s"] for r in out["runs"]), 1)
    out["skipped"] = [t for t in old.get("skipped", []) if t in new.get("skipped", [])]
    out["machine"] = new["machine"]
    return out


def table(res: dict) -> str:
    lines = [f"### {res['model']} ({res['images']} calibration / {res['inference']} search / {res['held_out']} held-out "
             f"images; all-INT8 {res['int8']['search']['similarity']:.6f})", "",
             "| tool | sim @1 | sim @3 | sim @5 | float layers for 0.99 / 0.995 / 0.999 | held-out sim at the 0.99 count | "
             "top-1 agr. @5 | exact evals | search s | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["tools"].items():
        if "curve" in r:
            at = lambda k, r=r: f"{r['at'][str(k)]['search']['similarity']:.6f}" if str(k) in r["at"] else "-"  # noqa: E731
            agr = r["at"].get("5", {}).get("search", {}).get("top1_agreement")
            ho = r["held_out_at_k_for_0.99"]
            ks = " / ".join(str(r[f"k_for_{t}"]) if r[f"k_for_{t}"] is not None else f">{len(r['order'])}"
                            for t in TARGETS)
            lines.append(f"| {name} | {at(1)} | {at(3)} | {at(5)} | {ks} | "
                         f"{'-' if ho is None else f'{ho:.6f}'} | {'-' if agr is None else f'{agr:.3f}'} | "
                         f"{r.get('n_evaluations', '-')} | {r.get('search_s', '-')} | {r['wall_s']} |")
        else:
            s = r["result"]["search"]
            lines.append(f"| {name} (its qtable: {len(r['float_layers'])} layers) | - | - | - | "
                         f"{s['similarity']:.6f} with {len(r['float_layers'])} | "
                         f"{r['result']['held_out']['similarity']:.6f} | - | - | - | {r['wall_s']} |")
    kt = res["kendall_tau"]
    lines.append("")
    lines.append(f"Kendall tau: leave-one-out vs leave-one-in {kt['leave_one_out_vs_leave_one_in']:.3f}; gradient "
                 f"taylor / fisher vs exact leave-one-out {kt['grad_taylor_vs_leave_one_out']:.3f} / "
                 f"{kt['grad_fisher_vs_leave_one_out']:.3f}; top-5 overlap grad_screen/leave_one_out "
                 f"{res['overlap_top5']['grad_screen_vs_leave_one_out']}, leave_one_out/sensitive "
                 f"{res['overlap_top5']['leave_one_out_vs_sensitive']}; grad_screen search time / sensitive search time "
                 f"{res['time_ratio']['grad_screen_over_sensitive_search']:.2f}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results):
        for name, r in res["tools"].items():
            if "curve" in r:
                ax.plot(range(len(r["curve"]["search"])), r["curve"]["search"], marker="o", ms=2, lw=1, label=name)
            else:
                ax.plot([len(r["float_layers"])], [r["result"]["search"]["similarity"]], "k*", ms=7)
                ax.annotate(name, (len(r["float_layers"]), r["result"]["search"]["similarity"]), fontsize=6)
        for t in TARGETS:
            ax.axhline(t, color="gray", ls=":", lw=1)
        ax.set_title(res["model"], fontsize=9)
        ax.set_xlabel("float layers")
        ax.set_ylabel("similarity (0.5+0.5cos), search images")
        lo = min(min(r["curve"]["search"]) for r in res["tools"].values() if "curve" in r)
        ax.set_ylim(max(lo - 0.002, 0.8), 1.0005)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reach(key: str, a, env, target: float = 0.99, limit: int = 20) -> dict:
    """How many float layers each order needs to exceed ``target`` (beyond ``--max_k``): TPU-MLIR's top-N order
    (the sensitive search, ``--max_float_layers limit``) and auto_n, each on the base table and on the sensitive
    search's new table.  auto_n stops at the target; top-N prefixes are scored until they pass it."""
    import numpy as np

    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import load_inputs, make_preprocess, preset_for_model
    from qsens.search.evaluators import Config, run_mixed
    from qsens.search.problem import Problem
    from qsens.tables import read_cali_table
    from qsens.zoo import zoo_path

    model = str(zoo_path(f"{key}.onnx"))
    work = Path(a.work or tempfile.mkdtemp(prefix="variants_")) / f"{key}_reach"
    work.mkdir(parents=True, exist_ok=True)
    shape = ["--input_shapes", SHAPES[key]] if key in SHAPES else []
    data = ["--dataset", str(zoo_path("images100")), "--input_num", str(a.images), "--seed", str(a.seed), *shape,
            "--inference_num", str(a.inference), "-q"]
    s = work / "sensitive"
    wall_s = run_qsens(["search", model, *data, "--expected_cos", "0.9999", "--max_float_layers", str(limit),
                  "--out_dir", str(s)], env, work / "sensitive.log")
    order = qtable_ops(s / "qtable")
    tables = {"base table": s / "cali_table", "sensitive table": s / "new_cali_table.txt"}
    shapes = json.loads(SHAPES[key]) if key in SHAPES else None
    fn, _ = to_jax(model, shapes)
    g = fn.graph
    files = select_files(str(zoo_path("images100")), input_num=0, seed=a.seed)[: a.inference]
    x = load_inputs(files, g, make_preprocess(g, preset=preset_for_model(model)))
    out = {"target": target, "limit": limit, "sensitive_wall_s": round(wall_s, 1), "rows": {}}
    for tname, table in tables.items():
        p = Problem.from_table(fn.model, read_cali_table(str(table)), x)
        curve = []
        for k in range(len(order) + 1):
            outs = run_mixed(p, Config(frozenset(g.op_names) - set(order[:k]), p.th0))
            curve.append(float(np.mean(p.scorer.per_sample(outs))))
            if curve[-1] > target:
                break
        k_top = len(curve) - 1 if curve[-1] > target else None
        if a.skip_auto_n:
            out["rows"][tname] = {"top_n_order_curve": curve, "top_n_k": k_top, "auto_n": "not run (--skip_auto_n)",
                                  "top_n_layers": order[: len(curve) - 1]}
            print(f"{key} {tname}: top-N order needs {k_top} float layers for > {target}", flush=True)
            continue
        d = work / f"auto_n_{tname.split()[0]}"
        wall = run_qsens(["search", model, *data, "--variant", "auto_n", "--calibration_table", str(table),
                    "--expected_cos", str(target), "--max_float_layers", str(limit), "--out_dir", str(d)], env,
                   work / f"auto_n_{tname.split()[0]}.log")
        j = json.loads((d / "search.json").read_text())
        ac = j["state"]["curve"]
        k_auto = ac[-1][0] if ac[-1][1] > target else None
        out["rows"][tname] = {"top_n_order_curve": curve, "top_n_k": k_top, "auto_n_curve": [c[1] for c in ac],
                              "auto_n_k": k_auto, "auto_n_layers": j["float_layers"], "top_n_layers": order[: len(curve) - 1],
                              "auto_n_wall_s": round(wall, 1), "auto_n_search_s": round(j["timings"]["search_s"], 1)}
        print(f"{key} {tname}: top-N order needs {k_top} float layers for > {target}, auto_n {k_auto}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--inference", type=int, default=30)
    ap.add_argument("--max_k", type=int, default=10)
    ap.add_argument("--top_k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1684)
    ap.add_argument("--out", default=str(ROOT / "experiments/results/compare_variants"))
    ap.add_argument("--work", default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--reach", action="store_true",
                    help="only: float layers TPU-MLIR's top-N order and auto_n need for 0.99 (up to 20), per model")
    ap.add_argument("--skip_auto_n", action="store_true", help="with --reach: the top-N order curves only")
    ap.add_argument("--skip", default="", help="tools not to run, e.g. threshold_optax,search_qtable (recorded)")
    ap.add_argument("--merge", action="store_true",
                    help="run only the tools the model's earlier JSON skipped (plus the sensitive search, checked to "
                         "reproduce the earlier curves) and fold them into that JSON")
    a = ap.parse_args(argv)
    a.skip = tuple(x for x in a.skip.split(",") if x)
    base_skip = a.skip
    from benchmarks.common import machine  # noqa: PLC0415
    from qsens.zoo import zoo_path

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    if a.reach:
        for key in a.models.split(","):
            r = reach(key, a, env)
            r["machine"] = machine()
            (out / f"{key}_reach.json").write_text(json.dumps(r, indent=1) + "\n")
        return
    results = []
    for key in a.models.split(","):
        model = str(zoo_path(f"{key}.onnx"))
        work = Path(a.work or tempfile.mkdtemp(prefix="variants_")) / key
        work.mkdir(parents=True, exist_ok=True)
        earlier = json.loads((out / f"{key}.json").read_text()) if a.merge and (out / f"{key}.json").exists() else None
        done = {"auto_n@sensitive_table" if t == "auto_n (sensitive table)" else t for t in (earlier or {}).get("tools", ())}
        a.skip = base_skip + tuple(t for t in done if t not in ("sensitive", "sensitive (base table)"))
        t0 = time.perf_counter()
        tools = run_tools(model, key, a, work, env)
        res = score(model, key, a, tools)
        res["total_s"] = round(time.perf_counter() - t0, 1)
        res["skipped"] = list(a.skip)
        res["machine"] = machine()
        if earlier is not None:
            res = merge(earlier, res)
        (out / f"{key}.json").write_text(json.dumps(res, indent=1) + "\n")
        results.append(res)
        print(table(res), flush=True)
    # the figure and summary cover every model whose JSON is in the folder (models can be run separately)
    order = {k: i for i, k in enumerate(MODELS)}
    results = sorted((json.loads(p.read_text()) for p in out.glob("*.json") if p.stem in order),
                     key=lambda r: order[r["model"]])
    plot(results, out / "compare_variants.png")
    summary = {r["model"]: {name: {k: t.get(k) for k in ("k_for_0.99", "k_for_0.995", "k_for_0.999",
                                                           "held_out_at_k_for_0.99", "n_evaluations", "search_s",
                                                           "wall_s")}
                            for name, t in r["tools"].items()} for r in results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
