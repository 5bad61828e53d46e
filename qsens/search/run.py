"""``qsens.search``: the whole sensitive-layer search job (run_sensitive_layer.py equivalent).

Files written into ``out_dir`` (TPU-MLIR names): the qtable (``-o``), ``new_cali_table.txt``, the log
``SensitiveLayerSearch`` (``INFO:root:...`` lines with TPU-MLIR's messages), ``search.json`` (every op,
method, threshold, loss, candidate count, timings), ``sensitivity.png``; and, when qsens calibrated,
``cali_table`` plus the per-method tables ``cali_table_<method>.1`` / ``cali_table_<method>_tune``.
A checkpoint ``search.ckpt.json`` is written after every op; ``resume=True`` continues from it and reaches
byte-identical qtable and table files.  Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..calibrate import SL_NAMES, parse_method
from ..engine import CompileStats
from ..errors import SearchError
from ..quant.mixed import plan_from_table, thresholds_from_table
from .analysis import Sensitivity, analysis_sensitive_layers
from .sensitive import Candidate, OpResult, SearchRunner, choose, distinct

LOG_NAME = "SensitiveLayerSearch"
CKPT = "search.ckpt.json"


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    methods: tuple[str, ...] = ("max", "percentile9999", "kl")
    max_float_layers: int = 5
    expected_cos: float = 0.99
    strategy: str = "fast"  # fast | naive
    method_batch: str = "loop"  # loop | concat (fast strategy: how the candidates' suffixes are batched)
    compare_layers: tuple[str, ...] | None = None
    compare_weights: tuple[float, ...] | None = None
    chip: str = "bm1684"

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(parse_method(m) for m in self.methods))
        if self.strategy not in ("fast", "naive"):
            raise SearchError(f"--strategy must be fast or naive, got {self.strategy!r}")
        if self.method_batch not in ("loop", "concat"):
            raise SearchError(f"method batch must be loop or concat, got {self.method_batch!r}")
        if self.chip.lower() != "bm1684":
            raise SearchError(f"--chip {self.chip}: qsens simulates BM1684 only (ChipSpec); use --chip bm1684")


@dataclasses.dataclass
class SearchResult:
    early_exit: bool
    int8_similarity: float
    int8_cosine: float
    ops: list[OpResult]
    float_layers: list[str]
    new_thresholds: dict[str, float]
    summary: dict[str, Any]
    timings: dict[str, float]
    files: dict[str, str]
    evaluated_ops: int = 0

    def to_json(self) -> dict:
        return {
            "early_exit": self.early_exit,
            "int8_similarity": self.int8_similarity,
            "int8_cosine": self.int8_cosine,
            "float_layers": self.float_layers,
            "summary": self.summary,
            "ops": [dataclasses.asdict(o) for o in self.ops],
            "n_candidates_evaluated": sum(1 for o in self.ops for c in o.candidates if c.same_as is None),
            "n_candidates": sum(len(o.candidates) for o in self.ops),
            "timings": self.timings,
            "files": self.files,
        }


# --------------------------------------------------------------------------------------------- files
def atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _make_logger(out_dir: str, resume: bool) -> logging.Logger:
    """``INFO:root:<message>`` lines in ``<out_dir>/SensitiveLayerSearch`` (Python logging's default format)."""
    log = logging.getLogger(f"qsens.search.{id(out_dir)}.{time.time_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    path = os.path.join(out_dir, LOG_NAME)
    h = logging.FileHandler(path, mode="a" if resume else "w")
    h.setFormatter(logging.Formatter("%(levelname)s:root:%(message)s"))
    log.addHandler(h)
    return log


def _close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- the job
def search(model, base_table, method_thresholds: Mapping[str, Mapping[str, float]], inputs: Mapping[str, np.ndarray],
           config: SearchConfig = SearchConfig(), *, out_dir: str = ".", qtable_path: str = "qtable",
           resume: bool = False, post_process: Callable | None = None, progress: bool = True,
           echo: Callable[[str], None] | None = None, extra_files: Callable[[], dict[str, str]] | None = None,
           stats: CompileStats | None = None, post_process_id: str | None = None, chunk: int | None = None,
           labels: Sequence | None = None) -> SearchResult:
    """Run the sensitive-layer search.

    ``base_table``: :class:`qsens.tables.CaliTable` (``--calibration_table``: the INT8 model, signedness, the
    thresholds that evolve op by op); ``method_thresholds[m][tensor]``: each method's (tuned) threshold;
    ``inputs``: the inference images ``{input: (N, ...)}``; ``post_process_id`` identifies ``post_process`` in the
    resume checkpoint (e.g. a hash of its file).  ``extra_files()`` is called once the early exit is
    ruled out (qsens writes its own calibration tables then, so an early exit writes nothing).
    """
    t_start = time.perf_counter()
    echo = echo or (lambda s: print(s, flush=True))
    stats = stats or CompileStats()
    g = model.graph
    cfg = config
    methods = list(cfg.methods)
    for m in methods:
        if m not in method_thresholds:
            raise SearchError(f"no thresholds for method {m!r}; calibrate with it first")
    plan = plan_from_table(g, base_table)
    th0 = thresholds_from_table(g, base_table)
    n = int(next(iter(inputs.values())).shape[0])
    runner = SearchRunner(model, plan, inputs, compare=cfg.compare_layers, compare_weights=cfg.compare_weights,
                          post_process=post_process, n_methods=len(methods), stats=stats,
                          **({"chunk": chunk} if chunk else {}))
    t_ref = time.perf_counter()
    all_ops = {op.name for op in g.ops}
    int8_sim, int8_cos, int8_first = runner.mixed_similarity(th0, all_ops)
    t_int8 = time.perf_counter()
    if int8_sim > cfg.expected_cos:
        msg = (f"job success, current int8 cos:{int8_sim} is higher than expected_cos:{cfg.expected_cos},"
               "no need for mix precsion")
        echo(msg)
        return SearchResult(True, int8_sim, int8_cos, [], [], {}, {}, {"total_s": time.perf_counter() - t_start},
                            {}, 0)

    os.makedirs(out_dir, exist_ok=True)
    files = dict(extra_files() if extra_files else {})
    log = _make_logger(out_dir, resume)
    try:
        return _run(model, g, plan, base_table, method_thresholds, cfg, methods, runner, th0, int8_sim, int8_cos,
                    out_dir, qtable_path, resume, progress, echo, log, files, stats, n,
                    {"float_reference_s": t_ref - t_start, "int8_model_s": t_int8 - t_ref}, t_start,
                    post_process_id, labels, int8_first)
    finally:
        _close_logger(log)


def _run(model, g, plan, base_table, method_thresholds, cfg, methods, runner, th0, int8_sim, int8_cos, out_dir,
         qtable_path, resume, progress, echo, log, files, stats, n, timings, t_start, post_id, labels,
         int8_first) -> SearchResult:
    from ..tables import dump_cali_table, update_threshold, write_qtable

    idx = plan.tensor_index
    ckpt_path = os.path.join(out_dir, CKPT)
    key = _fingerprint({
        "model": g.op_names, "methods": methods, "table": th0.tolist(), "n": n, "strategy": cfg.strategy,
        "method_thresholds": {m: [method_thresholds[m][t] for t in g.tensors] for m in methods},
        "compare": cfg.compare_layers, "compare_weights": cfg.compare_weights, "post_process": post_id,
        "method_batch": cfg.method_batch, "expected_cos": cfg.expected_cos,
    })
    done: list[OpResult] = []
    th = th0.copy()
    if resume and os.path.exists(ckpt_path):
        with open(ckpt_path) as f:
            ck = json.load(f)
        if ck.get("key") != key:
            raise SearchError(f"{ckpt_path} was written by a different search (model, table, methods, images or "
                              "strategy differ); remove it or drop --resume")
        for o in ck["ops"]:
            cands = [Candidate(**c) for c in o.pop("candidates")]
            done.append(OpResult(candidates=cands, **o))
        th = np.asarray(ck["th"], np.float32)
        echo(f"resuming: {len(done)} of {len(g.ops)} ops already evaluated in {ckpt_path}")
    log.info(f"all_int8_cos={int8_sim}")
    log.info("layer name check pass !")
    if cfg.compare_layers:
        log.info(f"Global metrics layer is : {list(cfg.compare_layers)}")

    from tqdm import tqdm

    bar = tqdm(total=len(g.ops), initial=len(done), desc="sensitive-layer search", unit="op", file=sys.stderr,
               dynamic_ncols=True, disable=not progress)
    t_search = time.perf_counter()
    if cfg.strategy == "fast":
        runner.fast_begin()
        for i in range(len(done)):
            runner.fast_advance(i)
    evaluated = 0
    for i in range(len(done), len(g.ops)):
        op = g.ops[i]
        t0 = time.perf_counter()
        out_t = op.outputs[0]
        ths = [float(method_thresholds[m][out_t]) for m in methods]
        log.info(f"start to handle layer: {op.name}, type: top.{op.type}")
        # effective output thresholds (copy map): methods with equal ones share a loss
        effs = []
        for c in ths:
            tt = th.copy()
            tt[idx[out_t]] = c
            effs.append(float(plan.effective(tt)[idx[out_t]]))
        uniq, where = distinct(effs)
        reps = [ths[where.index(k)] for k in range(len(uniq))]
        if cfg.strategy == "fast":
            ul = runner.candidates_fast(i, th, reps, cfg.method_batch)
        else:
            ul = runner.candidates_naive(i, th, reps)
        losses = [ul[w] for w in where]
        same_as = [None if where.index(w) == k else SL_NAMES[methods[where.index(w)]] for k, w in enumerate(where)]
        for m, c, l in zip(methods, ths, losses):
            log.info(f"adjust layer {op.name} th, with method {SL_NAMES[m]}, and threshlod {c}")
            log.info(f"outputs_cos_los = {l}")
        r = choose(op.name, op.type, [SL_NAMES[m] for m in methods], ths, losses, same_as, time.perf_counter() - t0)
        th[idx[out_t]] = np.float32(r.best_threshold)
        log.info(f"layer {op.name}, layer type is top.{op.type}, best_th = {r.best_threshold}, "
                 f"best_method = {r.best_method}, best_cos_loss = {r.best_loss}")
        done.append(r)
        evaluated += 1
        if cfg.strategy == "fast":
            runner.fast_advance(i)
        atomic_write(ckpt_path, json.dumps({"key": key, "ops": [dataclasses.asdict(o) for o in done],
                                            "th": [float(v) for v in th]}))
        bar.update(1)
    bar.close()
    t_done = time.perf_counter()

    sens = [Sensitivity(o.op, o.best_loss, o.type) for o in done]
    float_layers, lines = analysis_sensitive_layers(sens, cfg.max_float_layers, g)
    for ln in lines:
        log.info(ln)
    log.info(f"set_fp_layer_list = {float_layers}")
    # new calibration table: the input table with every op's threshold replaced by its best one
    new_table = base_table
    new_th = {}
    for o in done:
        t = g.op(o.op).outputs[0]
        new_th[t] = o.best_threshold
        new_table = update_threshold(new_table, t, o.best_threshold)
    th_new = thresholds_from_table(g, new_table)
    int8_set = {op.name for op in g.ops} - set(float_layers)
    mix_new = runner.mixed_similarity(th_new, int8_set)
    mix_old = runner.mixed_similarity(th0, int8_set)
    summary = {
        "int8": {"similarity": int8_sim, "cosine": int8_cos},
        "mix_original_table": {"similarity": mix_old[0], "cosine": mix_old[1]},
        "mix_new_table": {"similarity": mix_new[0], "cosine": mix_new[1]},
        "expected_cos": cfg.expected_cos,
        "n_float_layers": len(float_layers),
        "n_images": n,
        "similarity_scale": "0.5+0.5*cos (TPU-MLIR); 'cosine' is the plain cosine",
    }
    ref = runner.ref_outputs[next(iter(runner.ref_outputs))]
    if ref.ndim == 2 and ref.shape[1] > 1:
        top = lambda a: np.argmax(np.asarray(a), 1)  # noqa: E731
        for k, outs in (("int8", int8_first), ("mix_original_table", mix_old[2]),
                        ("mix_new_table", mix_new[2])):
            summary[k]["top1_agreement"] = float(np.mean(top(outs) == top(ref)))
        if labels is not None:
            summary["labelled"] = {k: label_accuracy(o, labels) for k, o in (
                ("fp32", ref), ("int8", int8_first), ("mix_original_table", mix_old[2]),
                ("mix_new_table", mix_new[2]))}
    summary["f32_ops"] = dict(plan.f32_reason)
    log.info(">>>run result:")
    log.info(f"int8 outputs_cos:{int8_sim:.6f} old")
    log.info(f"mix model outputs_cos:{mix_new[0]:.6f}")
    qpath = qtable_path if os.path.isabs(qtable_path) else os.path.join(out_dir, qtable_path)
    ncal = os.path.join(out_dir, "new_cali_table.txt")
    dump_cali_table(ncal, new_table)  # the table first, the qtable last: a qtable never lacks its table
    os.makedirs(os.path.dirname(os.path.abspath(qpath)), exist_ok=True)
    write_qtable(qpath, [(name, "F32") for name in float_layers], sample_number=n, chip="bm1684", mix_mode="F32")
    log.info(f"Output mix quantization table to {qpath}")
    files.update({"qtable": qpath, "new_cali_table": ncal, "log": os.path.join(out_dir, LOG_NAME)})
    timings.update({"search_s": t_done - t_search, "summary_s": time.perf_counter() - t_done,
                    "total_s": time.perf_counter() - t_start, "compile": stats.as_dict()})
    log.info(f"total time:{timings['total_s']}")
    result = SearchResult(False, int8_sim, int8_cos, done, float_layers, new_th, summary, timings, files, evaluated)
    png = os.path.join(out_dir, "sensitivity.png")
    try:
        plot_losses(result, png, [SL_NAMES[m] for m in methods])
        files["plot"] = png
    except Exception as e:  # noqa: BLE001 - a plot must never lose the search
        echo(f"warning: plot not written ({type(e).__name__}: {e})")
    files["search_json"] = os.path.join(out_dir, "search.json")
    atomic_write(files["search_json"], json.dumps(result.to_json(), indent=1) + "\n")
    if os.path.exists(ckpt_path):
        os.remove(ckpt_path)
    return result


def label_accuracy(logits, labels) -> dict:
    """Top-1 / top-5 accuracy over the samples that have a label (an int or a list of acceptable ints)."""
    logits = np.asarray(logits)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    n = c1 = c5 = 0
    for row, lab in zip(top5, labels):
        if lab is None:
            continue
        ok = set(lab) if isinstance(lab, list | tuple) else {int(lab)}
        n += 1
        c1 += int(row[0]) in ok
        c5 += bool(ok & set(int(v) for v in row))
    return {"n": n, "top1": c1 / n if n else None, "top5": c5 / n if n else None}


def plot_losses(result: SearchResult, path: str, methods: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [o.op for o in result.ops]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.22), 4.5))
    for k, m in enumerate(methods):
        ys = [max(o.candidates[k].loss, 1e-9) for o in result.ops]
        ax.plot(x, ys, marker="o", ms=3, lw=1, label=m)
    for j, name in enumerate(names):
        if name in result.float_layers:
            ax.axvline(j, color="red", alpha=0.25, lw=4)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_ylabel("loss = 1 - similarity (only this op INT8)")
    s = result.summary
    ax.set_title(f"sensitive-layer search: INT8 {s['int8']['similarity']:.4f} -> MIX {s['mix_new_table']['similarity']:.4f} "
                 f"with {len(result.float_layers)} float layers (red)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)
