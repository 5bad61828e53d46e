"""The variants' job: a :mod:`qsens.search.variants` strategy with TPU-MLIR's output files, checkpoints, log, plot.

:func:`variant_search` writes what the sensitive search writes: the qtable (``-o``), ``new_cali_table.txt``
(the input table with the thresholds the variant chose; unchanged for the variants that only choose float
layers), the log ``SensitiveLayerSearch`` (``INFO:root:`` lines), ``search.json`` (settings, every exact
evaluation, the strategy's final state, summary, counts of walks/runs/executables/calls, timings) and
``variant.png``.  The state goes to ``search.ckpt.json`` after every update; ``resume=True`` continues from it
and reaches byte-identical qtable, table and ``search.json`` minus timings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np

from ..engine import CompileStats, ExecutableCache
from .evaluators import Config, mixed_similarity
from .job import (
    CKPT,
    LOG_NAME,
    _close_logger,
    _fingerprint,
    _make_logger,
    atomic_write,
    job_problem,
    label_accuracy,
    load_checkpoint,
    plot_safely,
    prefetch_plotting,
    save_figure,
)
from .variants import Variant, Walker, all_ops

THRESHOLD_VARIANTS = ("threshold_grid", "threshold_optax")


def variant_search(model, base_table, inputs: Mapping[str, np.ndarray], variant: Variant, *, out_dir: str = ".",
                   qtable_path: str = "qtable", resume: bool = False, post_process: Callable | None = None,
                   post_process_id: str | None = None, compare_layers=None, compare_weights=None,
                   progress: bool = True, echo: Callable[[str], None] | None = None,
                   stats: CompileStats | None = None, chunk: int | None = None, labels=None,
                   cache: ExecutableCache | None = None, extra_files: Callable[[], dict] | None = None,
                   chip=None) -> dict:
    """Run ``variant`` on ``base_table`` (:class:`qsens.tables.CaliTable`) and the inference ``inputs``.

    Returns the ``search.json`` dict (``early_exit`` True and nothing written when the all-INT8 model already
    exceeds ``expected_cos`` and the variant only chooses float layers)."""
    from ..tables import dump_cali_table, update_threshold, write_qtable

    t_start = time.perf_counter()
    echo = echo or (lambda s: print(s, flush=True))
    stats = stats or CompileStats()
    problem = job_problem(model, base_table, inputs, compare_layers, compare_weights, post_process, stats, cache,
                          chunk, chip)
    g = problem.graph
    int8 = mixed_similarity(problem, Config(all_ops(problem), problem.th0))
    t_int8 = time.perf_counter()
    if int8[0] > variant.expected_cos and variant.name not in THRESHOLD_VARIANTS:
        echo(f"job success, current int8 cos:{int8[0]} is higher than expected_cos:{variant.expected_cos},"
             "no need for mix precsion")
        return {"early_exit": True, "int8_similarity": int8[0], "float_layers": []}
    os.makedirs(out_dir, exist_ok=True)
    files = dict(extra_files() if extra_files else {})
    ckpt_path = os.path.join(out_dir, CKPT)
    key = _fingerprint({"model": g.op_names, "table": problem.th0.tolist(), "n": problem.n, "chunk": problem.chunk,
                        "settings": variant.settings(), "compare": compare_layers, "compare_weights": compare_weights,
                        "post_process": post_process_id})
    state = None
    ck = load_checkpoint(ckpt_path, key, "variant search") if resume else None
    if ck is not None:
        state = ck
        echo(f"resuming: {variant.name} from {ckpt_path} ({len(state['evals'])} evaluations done)")
    log = _make_logger(out_dir, resume and state is not None)
    try:
        if state is None:
            state = variant.init(problem)
            log.info(f"variant={variant.name} settings={json.dumps(variant.settings(), sort_keys=True)}")
            log.info(f"all_int8_cos={int8[0]}")
        from tqdm import tqdm

        walker = Walker(problem)
        bar = tqdm(total=variant.total_units(problem, state), desc=f"{variant.name} search", unit="step",
                   file=sys.stderr, dynamic_ncols=True, disable=not progress)
        t_search = time.perf_counter()
        prefetch_plotting()
        while not variant.done(problem, state):
            state, events = variant.update(problem, state, walker)
            for e in events:
                log.info(e)
            atomic_write(ckpt_path, json.dumps({"key": key, **state}))
            bar.update(1)
            bar.set_postfix(evaluations=len(state["evals"]), refresh=False)
        bar.close()
        t_done = time.perf_counter()

        float_layers = list(state["float_layers"])
        th_new = np.asarray(state["th"], np.float32)
        new_table = base_table
        changed = {}
        for k, t in enumerate(g.tensors):
            if t in base_table.entries and np.float32(th_new[k]) != np.float32(problem.th0[k]):
                new_table = update_threshold(new_table, t, float(th_new[k]))
                changed[t] = float(th_new[k])
        int8_set = all_ops(problem) - set(float_layers)
        mix_new = mixed_similarity(problem, Config(int8_set, th_new))
        mix_old = mixed_similarity(problem, Config(int8_set, problem.th0))
        int8_new = mixed_similarity(problem, Config(all_ops(problem), th_new)) if changed else int8
        summary = {
            "int8": {"similarity": int8[0], "cosine": int8[1]},
            "int8_new_table": {"similarity": int8_new[0], "cosine": int8_new[1]},
            "mix_original_table": {"similarity": mix_old[0], "cosine": mix_old[1]},
            "mix_new_table": {"similarity": mix_new[0], "cosine": mix_new[1]},
            "expected_cos": variant.expected_cos, "n_float_layers": len(float_layers), "n_images": problem.n,
            "n_thresholds_changed": len(changed), "n_evaluations": len(state["evals"]),
            "similarity_scale": "0.5+0.5*cos (TPU-MLIR); 'cosine' is the plain cosine",
        }
        ref = problem.ref_outputs[next(iter(problem.ref_outputs))]
        if ref.ndim == 2 and ref.shape[1] > 1:
            top = lambda a: np.argmax(np.asarray(a), 1)  # noqa: E731
            for k, o in (("int8", int8[2]), ("mix_original_table", mix_old[2]), ("mix_new_table", mix_new[2])):
                summary[k]["top1_agreement"] = float(np.mean(top(o) == top(ref)))
            if labels is not None:
                summary["labelled"] = {k: label_accuracy(o, labels) for k, o in (
                    ("fp32", ref), ("int8", int8[2]), ("mix_new_table", mix_new[2]))}
        log.info(f"set_fp_layer_list = {float_layers}")
        log.info(">>>run result:")
        log.info(f"int8 outputs_cos:{int8[0]:.6f} old")
        log.info(f"mix model outputs_cos:{mix_new[0]:.6f}")
        qpath = qtable_path if os.path.isabs(qtable_path) else os.path.join(out_dir, qtable_path)
        ncal = os.path.join(out_dir, "new_cali_table.txt")
        dump_cali_table(ncal, new_table)  # the table first, the qtable last
        os.makedirs(os.path.dirname(os.path.abspath(qpath)), exist_ok=True)
        ft = problem.plan.float_type
        write_qtable(qpath, [(n, ft) for n in float_layers], sample_number=problem.n,
                     chip=problem.plan.chip.name.lower(), mix_mode=ft)
        log.info(f"Output mix quantization table to {qpath}")
        files.update({"qtable": qpath, "new_cali_table": ncal, "log": os.path.join(out_dir, LOG_NAME)})
        timings = {"int8_model_s": t_int8 - t_start, "search_s": t_done - t_search,
                   "total_s": time.perf_counter() - t_start, "compile": stats.as_dict()}
        log.info(f"total time:{timings['total_s']}")
        result = {"early_exit": False, "variant": variant.name, "settings": variant.settings(),
                  "float_layers": float_layers, "thresholds_changed": changed, "summary": summary,
                  "counts": dict(walker.counts), "state": state, "timings": timings, "files": files}
        plot_safely(lambda p: plot_variant(result, p), os.path.join(out_dir, "variant.png"), echo, files)
        files["search_json"] = os.path.join(out_dir, "search.json")
        atomic_write(files["search_json"], json.dumps(result, indent=1) + "\n")
        if os.path.exists(ckpt_path):
            os.remove(ckpt_path)
        return result
    finally:
        _close_logger(log)


def plot_variant(result: dict, path: str) -> None:
    """Similarity against float layers (or float MACs, with the Pareto front) and the per-op scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = result["state"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    if "points" in st:
        xs = [p["macs"] / 1e6 for p in st["points"]]
        ys = [p["similarity"] for p in st["points"]]
        ax.plot(xs, ys, "o-", ms=3, lw=1, label="ops added by gain per MAC")
        fr = st.get("front", [])
        ax.plot([xs[i] for i in fr], [ys[i] for i in fr], "s", color="red", ms=5, label="Pareto front")
        if "budget_macs" in st:
            ax.axvline(st["budget_macs"] / 1e6, color="gray", ls="--", lw=1, label="budget")
        ax.set_xlabel("float MACs per image (M)")
    elif st.get("curve"):
        ax.plot([c[0] for c in st["curve"]], [c[1] for c in st["curve"]], "o-", ms=4)
        ax.set_xlabel("float layers")
    elif st.get("history"):
        ax.plot(1.0 - np.asarray(st["history"]), lw=1)
        ax.set_xlabel("Adam step")
    ax.axhline(result["settings"]["expected_cos"], color="gray", ls=":", lw=1)
    ax.set_ylabel("similarity (0.5+0.5cos)")
    ax.legend(fontsize=7) if "points" in st else None
    ax = axes[1]
    scores = st.get("scores") or {}
    if scores:
        names = list(scores)
        ax.bar(np.arange(len(names)), [scores[n] for n in names],
               color=["red" if n in result["float_layers"] else "steelblue" for n in names])
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=4)
        ax.set_ylabel("score (gain or loss; red: float)")
    s = result["summary"]
    fig.suptitle(f"{result['variant']}: INT8 {s['int8']['similarity']:.4f} -> MIX {s['mix_new_table']['similarity']:.4f} "
                 f"with {len(result['float_layers'])} float layers", fontsize=9)
    save_figure(fig, path)
