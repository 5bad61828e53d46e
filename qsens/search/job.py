"""The job: the only part of ``qsens.search`` that does I/O (files, logs, progress, checkpoints, plot).

:func:`search` runs a strategy (:class:`~qsens.search.strategies.SensitiveLayer`) with an evaluator
(:class:`~qsens.search.evaluators.FloatPrefix` or :class:`~qsens.search.evaluators.WholeGraph`) on a
:class:`~qsens.search.problem.Problem` and a selector (:class:`~qsens.search.selectors.TopN`), and writes
TPU-MLIR's files into ``out_dir``: the qtable (``-o``), ``new_cali_table.txt``, the log
``SensitiveLayerSearch`` (``INFO:root:...`` lines with TPU-MLIR's messages), ``search.json`` (every op,
method, threshold, loss, candidate count, timings), ``sensitivity.png``; and, when qsens calibrated,
``cali_table`` plus the per-method tables ``cali_table_<method>.1`` / ``cali_table_<method>_tune``.
The strategy's state is written to ``search.ckpt.json`` after every op; ``resume=True`` continues from it
and reaches byte-identical qtable and table files.  Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..calibrate import parse_method
from ..devices import fetch
from ..engine import CompileStats, ExecutableCache
from ..errors import SearchError
from ..quant.mixed import thresholds_from_table
from .candidates import method_candidates
from .evaluators import Config, FloatPrefix, WholeGraph, mixed_similarity
from .problem import Problem
from .selectors import Sensitivity, TopN
from .strategies import OpResult, SensitiveLayer

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
        from ..quant.chip import as_chip

        as_chip(self.chip)  # one-line QsensError for an unsupported chip (a name, or a ChipSpec with its --fp_type)


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


def load_checkpoint(path: str, key: str, what: str) -> dict | None:
    """A job's checkpoint (its strategy state) if ``path`` exists; one-line error if another job wrote it."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        ck = json.load(f)
    if ck.pop("key", None) != key:
        raise SearchError(f"{path} was written by a different {what} (model, table, methods, images or flags "
                          "differ); remove it or drop --resume")
    return ck


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)


def plot_safely(plot, path: str, echo, files: dict) -> None:
    """``plot(path)``, recorded in ``files["plot"]``; a failing plot is a warning, never a lost search."""
    try:
        plot(path)
        files["plot"] = path
    except Exception as e:  # noqa: BLE001
        echo(f"warning: plot not written ({type(e).__name__}: {e})")


def prefetch_plotting() -> None:
    """Import matplotlib (~0.5 s of the plot's ~1 s) on a daemon thread while a search runs (its main thread mostly
    waits on XLA then), so the plot at the end does not wait for the import.  A failure is left to the plot itself,
    which reports it (:func:`plot_safely`)."""
    import threading

    def work():
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
        except Exception:  # noqa: BLE001 - the plot at the end imports it again and says what failed
            pass

    threading.Thread(target=work, name="qsens-prefetch-matplotlib", daemon=True).start()


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- the job
@dataclasses.dataclass
class JobIO:
    """Where a job writes and reports: its folder, log, console, progress, resume flag, files, compile stats."""

    out_dir: str
    log: logging.Logger
    echo: Callable[[str], None]
    progress: bool
    resume: bool
    files: dict
    stats: CompileStats
    t_start: float
    qtable_path: str = "qtable"


def job_problem(model, table, inputs, compare_layers, compare_weights, post_process, stats, cache, chunk,
                chip=None) -> Problem:
    """The :class:`Problem` a job searches (``chunk`` None: the default chunk; ``chip`` None: BM1684)."""
    return Problem.from_table(model, table, inputs, compare=compare_layers, compare_weights=compare_weights,
                              post_process=post_process, stats=stats, cache=cache, chip=chip,
                              **({"chunk": chunk} if chunk else {}))


class AllInt8(NamedTuple):
    similarity: float
    cosine: float
    first_output: np.ndarray


def search(model, base_table, method_thresholds: Mapping[str, Mapping[str, float]], inputs: Mapping[str, np.ndarray],
           config: SearchConfig = SearchConfig(), *, out_dir: str = ".", qtable_path: str = "qtable",
           resume: bool = False, post_process: Callable | None = None, progress: bool = True,
           echo: Callable[[str], None] | None = None, extra_files: Callable[[], dict[str, str]] | None = None,
           stats: CompileStats | None = None, post_process_id: str | None = None, chunk: int | None = None,
           labels: Sequence | None = None, cache: ExecutableCache | None = None,
           pre_timings: Mapping[str, float] | None = None) -> SearchResult:
    """Run the sensitive-layer search.

    ``base_table``: :class:`qsens.tables.CaliTable` (``--calibration_table``: the INT8 model, signedness, the
    thresholds that evolve op by op); ``method_thresholds[m][tensor]``: each method's (tuned) threshold;
    ``inputs``: the inference images ``{input: (N, ...)}``; ``post_process_id`` identifies ``post_process`` in the
    resume checkpoint (e.g. a hash of its file).  ``extra_files()`` is called once the early exit is
    ruled out (qsens writes its own calibration tables then, so an early exit writes nothing).  ``pre_timings``
    (e.g. the calibration's seconds and cores) are written into ``search.json``'s timings first.
    """
    t_start = time.perf_counter()
    echo = echo or (lambda s: print(s, flush=True))
    stats = stats or CompileStats()
    cfg = config
    candidates = method_candidates(cfg.methods, method_thresholds)
    problem = Problem.from_table(model, base_table, inputs, compare=cfg.compare_layers,
                                 compare_weights=cfg.compare_weights, post_process=post_process, stats=stats,
                                 cache=cache, chip=cfg.chip, **({"chunk": chunk} if chunk else {}))
    g = problem.graph
    t_ref = time.perf_counter()
    all_ops = frozenset(op.name for op in g.ops)
    int8_sim, int8_cos, int8_first = mixed_similarity(problem, Config(all_ops, problem.th0))
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
    evaluator = FloatPrefix(cfg.method_batch) if cfg.strategy == "fast" else WholeGraph()
    strategy = SensitiveLayer(candidates)
    key = _fingerprint({
        "model": g.op_names, "candidates": candidates.fingerprint, "table": problem.th0.tolist(), "n": problem.n,
        "strategy": cfg.strategy, "compare": cfg.compare_layers, "compare_weights": cfg.compare_weights,
        "post_process": post_process_id, "method_batch": cfg.method_batch, "expected_cos": cfg.expected_cos,
    })
    io = JobIO(out_dir, log, echo, progress, resume, files, stats, t_start, qtable_path)
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        state, evaluated, t_search, t_done = _run_strategy(
            problem, strategy, evaluator, key, io, [f"all_int8_cos={int8_sim}", "layer name check pass !"]
            + ([f"Global metrics layer is : {list(cfg.compare_layers)}"] if cfg.compare_layers else []))
        # cores used: the process's CPU time (every thread: XLA's pool included) over the wall time
        cores = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        timings = {**dict(pre_timings or {}), "float_reference_s": t_ref - t_start, "int8_model_s": t_int8 - t_ref,
                   "search_s": t_done - t_search, "search_cores": cores}
        return _finish(problem, io, cfg, strategy.results(state), TopN(cfg.max_float_layers), base_table,
                       candidates.labels, AllInt8(int8_sim, int8_cos, int8_first), labels, evaluated, timings, t_done)
    finally:
        _close_logger(log)


def _run_strategy(problem: Problem, strategy, evaluator, key: str, io: JobIO, first_lines: Sequence[str]):
    """Drive ``strategy`` to its end: checkpoint after every update, log its events, show progress."""
    ckpt_path = os.path.join(io.out_dir, CKPT)
    log = io.log
    state = strategy.init(problem)
    ck = load_checkpoint(ckpt_path, key, "search") if io.resume else None
    if ck is not None:
        state = ck
        io.echo(f"resuming: {state['next']} of {len(problem.ops)} ops already evaluated in {ckpt_path}")
    for line in first_lines:
        log.info(line)

    from tqdm import tqdm

    bar = tqdm(total=len(problem.ops), initial=state["next"], desc=f"{strategy.name.replace('_', '-')} search",
               unit="op", file=sys.stderr, dynamic_ncols=True, disable=not io.progress)
    t_search = time.perf_counter()
    prefetch_plotting()
    carry = evaluator.init(problem, start=state["next"])
    evaluated = 0
    while not strategy.done(problem, state):
        state, carry, events = strategy.update(problem, state, evaluator, carry)
        for e in events:
            log.info(e)
        evaluated += 1
        atomic_write(ckpt_path, json.dumps({"key": key, **state}))
        bar.update(1)
    bar.close()
    return state, evaluated, t_search, time.perf_counter()


def _finish(problem: Problem, io: JobIO, cfg, done: list[OpResult], selector: TopN, base_table, method_labels,
            int8: AllInt8, labels, evaluated: int, timings: dict, t_done: float) -> SearchResult:
    """Selection, new table, summary, files (the table first, the qtable last), plot, search.json."""
    out_dir, qtable_path, log, echo, files, stats = io.out_dir, io.qtable_path, io.log, io.echo, io.files, io.stats
    int8_sim, int8_cos, int8_first = int8
    from ..tables import dump_cali_table, update_threshold, write_qtable

    g = problem.graph
    n = problem.n
    ckpt_path = os.path.join(out_dir, CKPT)
    sens = [Sensitivity(o.op, o.best_loss, o.type) for o in done]
    float_layers, lines = selector.select(sens, g)
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
    int8_set = frozenset(op.name for op in g.ops) - set(float_layers)
    mix_new = mixed_similarity(problem, Config(int8_set, th_new))
    # the plot reads the losses, the float layers and the two similarities of its title: it is drawn on a thread
    # while the original table's mix runs (XLA computes without the GIL) and the files are written
    draft = SearchResult(False, int8_sim, int8_cos, done, float_layers, new_th, {
        "int8": {"similarity": int8_sim}, "mix_new_table": {"similarity": mix_new[0]}}, {}, {}, evaluated)
    plot_files: dict = {}
    plotter = threading.Thread(target=plot_safely, name="qsens-plot", daemon=True, args=(
        lambda p: plot_losses(draft, p, method_labels), os.path.join(out_dir, "sensitivity.png"), echo, plot_files))
    plotter.start()
    mix_old = mixed_similarity(problem, Config(int8_set, problem.th0))
    summary = {
        "int8": {"similarity": int8_sim, "cosine": int8_cos},
        "mix_original_table": {"similarity": mix_old[0], "cosine": mix_old[1]},
        "mix_new_table": {"similarity": mix_new[0], "cosine": mix_new[1]},
        "expected_cos": cfg.expected_cos,
        "n_float_layers": len(float_layers),
        "n_images": n,
        "similarity_scale": "0.5+0.5*cos (TPU-MLIR); 'cosine' is the plain cosine",
    }
    ref = problem.ref_outputs[next(iter(problem.ref_outputs))]
    if ref.ndim == 2 and ref.shape[1] > 1:
        top = lambda a: np.argmax(np.asarray(a), 1)  # noqa: E731
        for k, outs in (("int8", int8_first), ("mix_original_table", mix_old[2]),
                        ("mix_new_table", mix_new[2])):
            summary[k]["top1_agreement"] = float(np.mean(top(outs) == top(ref)))
        if labels is not None:
            summary["labelled"] = {k: label_accuracy(o, labels) for k, o in (
                ("fp32", ref), ("int8", int8_first), ("mix_original_table", mix_old[2]),
                ("mix_new_table", mix_new[2]))}
    summary["f32_ops"] = dict(problem.plan.f32_reason)
    log.info(">>>run result:")
    log.info(f"int8 outputs_cos:{int8_sim:.6f} old")
    log.info(f"mix model outputs_cos:{mix_new[0]:.6f}")
    qpath = qtable_path if os.path.isabs(qtable_path) else os.path.join(out_dir, qtable_path)
    ncal = os.path.join(out_dir, "new_cali_table.txt")
    dump_cali_table(ncal, new_table)  # the table first, the qtable last: a qtable never lacks its table
    os.makedirs(os.path.dirname(os.path.abspath(qpath)), exist_ok=True)
    ft = problem.plan.float_type  # the float layers' type (--fp_type; TPU-MLIR writes it as the mix mode)
    write_qtable(qpath, [(name, ft) for name in float_layers], sample_number=n,
                 chip=problem.plan.chip.name.lower(), mix_mode=ft)
    log.info(f"Output mix quantization table to {qpath}")
    files.update({"qtable": qpath, "new_cali_table": ncal, "log": os.path.join(out_dir, LOG_NAME)})
    timings.update({"summary_s": time.perf_counter() - t_done, "total_s": time.perf_counter() - io.t_start,
                    "compile": stats.as_dict()})
    log.info(f"total time:{timings['total_s']}")
    result = SearchResult(False, int8_sim, int8_cos, done, float_layers, new_th, summary, timings, files, evaluated)
    plotter.join()
    files.update(plot_files)
    files["search_json"] = os.path.join(out_dir, "search.json")
    atomic_write(files["search_json"], json.dumps(result.to_json(), indent=1) + "\n")
    if os.path.exists(ckpt_path):
        os.remove(ckpt_path)
    return result


def label_hits(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per labelled sample (an int or a list of acceptable ints; ``None`` samples skipped): top-1 and top-5
    hits as two bool arrays.  Ties in the logits go to the lower class index (stable sort)."""
    logits = np.asarray(logits)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    h1, h5 = [], []
    for row, lab in zip(top5, labels):
        if lab is None:
            continue
        ok = set(lab) if isinstance(lab, list | tuple) else {int(lab)}
        h1.append(int(row[0]) in ok)
        h5.append(bool(ok & set(int(v) for v in row)))
    return np.array(h1, bool), np.array(h5, bool)


def label_accuracy(logits, labels) -> dict:
    """Top-1 / top-5 accuracy over the samples that have a label (an int or a list of acceptable ints)."""
    h1, h5 = label_hits(logits, labels)
    n = len(h1)
    return {"n": n, "top1": int(h1.sum()) / n if n else None, "top5": int(h5.sum()) / n if n else None}


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
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------- qtable job
QTABLE_LOG = "MixPrecSearcher"
QTABLE_CKPT = "qtable.ckpt.json"


@dataclasses.dataclass
class QtableResult:
    early_exit: bool
    all_int8_similarity: float
    reported_mix_similarity: float  # TPU-MLIR's "mix model outputs_cos": the last step's, whatever happened to it
    true_mix_similarity: float | None  # the similarity of the qtable's model (None on an early exit)
    float_layers: list[str]
    state: dict
    summary: dict
    timings: dict
    files: dict

    def to_json(self) -> dict:
        return {"early_exit": self.early_exit, "all_int8_similarity": self.all_int8_similarity,
                "reported_mix_similarity": self.reported_mix_similarity,
                "true_mix_similarity": self.true_mix_similarity, "float_layers": self.float_layers,
                "summary": self.summary, "state": self.state, "timings": self.timings, "files": self.files}


def _save_carry(path: str, carry) -> list:
    """The INT8 cache (live tensors per chunk) as an .npz beside the JSON checkpoint; returns its index."""
    index, arrays = [], {}
    for c, env in enumerate(carry.int8):
        for t, v in env.items():
            index.append([c, t, v is not None])
            if v is not None:
                arrays[f"a{len(index) - 1}"] = fetch(v)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return index


def _load_carry(path: str, index: list, n_chunks: int, placement=None) -> tuple:
    from ..devices import Placement

    put = (placement or Placement()).put
    envs: list[dict] = [{} for _ in range(n_chunks)]
    with np.load(path) as z:
        for k, (c, t, present) in enumerate(index):
            envs[c][t] = put(z[f"a{k}"]) if present else None
    return tuple(envs)


def qtable_search(model, table, inputs: Mapping[str, np.ndarray], *, expected_cos: float = 0.99,
                  min_layer_cos: float = 0.99, out_dir: str = ".", qtable_path: str = "qtable",
                  loss_table: str = "full_loss_table.txt", mlir_name: str = "model", resume: bool = False,
                  post_process: Callable | None = None, post_process_id: str | None = None,
                  compare_layers=None, compare_weights=None, progress: bool = True,
                  echo: Callable[[str], None] | None = None, stats: CompileStats | None = None,
                  chunk: int | None = None, cache: ExecutableCache | None = None,
                  checkpoint_every_s: float = 10.0, chip=None) -> QtableResult:
    """``run_qtable.py``: TPU-MLIR's greedy mix-precision search (:mod:`qsens.search.mixprec`) with its files.

    Writes ``qtable_path``, ``loss_table`` (``full_loss_table.txt``), the log ``MixPrecSearcher``,
    ``qtable.json`` and ``layer_cos.png`` into ``out_dir``; nothing on an early exit (all-INT8 already above
    ``expected_cos``).  The strategy state goes to ``qtable.ckpt.json`` (with the INT8 cache in
    ``qtable.ckpt.npz``) at most every ``checkpoint_every_s`` seconds and after every float step;
    ``resume=True`` continues from it with byte-identical results.
    """
    from .mixprec import Int8Prefix, MixPrecision, all_int8_similarity, true_similarity

    if not 0.0 < float(min_layer_cos) <= 1.0:
        raise SearchError(f"--min_layer_cos {min_layer_cos} is outside (0, 1]; TPU-MLIR's scale is 0.5+0.5*cos "
                          "(default 0.99)")
    if not 0.0 < float(expected_cos) <= 1.0:
        raise SearchError(f"--expected_cos {expected_cos} is outside (0, 1]; TPU-MLIR's scale is 0.5+0.5*cos")
    t_start = time.perf_counter()
    echo = echo or (lambda s: print(s, flush=True))
    stats = stats or CompileStats()
    problem = job_problem(model, table, inputs, compare_layers, compare_weights, post_process, stats, cache, chunk,
                          chip)
    g = problem.graph
    all_int8 = all_int8_similarity(problem)
    t_int8 = time.perf_counter()
    if all_int8 > expected_cos:
        echo(f"job success, current int8 cos:{all_int8} is higher than expected_cos:{expected_cos},"
             "no need for mix precsion")
        return QtableResult(True, all_int8, 0.0, None, [], {}, {}, {"total_s": time.perf_counter() - t_start}, {})
    os.makedirs(out_dir, exist_ok=True)
    strategy = MixPrecision(expected_cos, min_layer_cos)
    ev = Int8Prefix()
    ckpt = os.path.join(out_dir, QTABLE_CKPT)
    ckpt_npz = ckpt.replace(".json", ".npz")
    key = _fingerprint({"model": g.op_names, "table": problem.th0.tolist(), "n": problem.n, "chunk": problem.chunk,
                        "expected_cos": expected_cos, "min_layer_cos": min_layer_cos, "compare": compare_layers,
                        "compare_weights": compare_weights, "post_process": post_process_id})
    state, carry = None, None
    ck = load_checkpoint(ckpt, key, "qtable search") if resume else None
    if ck is not None:
        index = ck.pop("int8_index")
        state = ck
        carry = ev.init(problem, state["next"], _load_carry(ckpt_npz, index, len(problem.chunks), problem.placement))
        echo(f"resuming: {state['next']} of {len(g.ops)} ops already walked in {ckpt}")
    if state is None:
        state = strategy.init(problem, all_int8)
        carry = ev.init(problem)
    log = _make_logger_named(out_dir, QTABLE_LOG, resume and state["next"] > 0)
    try:
        if state["next"] == 0:
            log.info(f"run float mode: {mlir_name}")
            log.info(f"run int8 mode: {mlir_name}")

        from tqdm import tqdm

        bar = tqdm(total=len(g.ops), initial=state["next"], desc="mix-precision search", unit="op",
                   file=sys.stderr, dynamic_ncols=True, disable=not progress)
        t_search = time.perf_counter()
        t_ck = time.perf_counter()
        while not strategy.done(problem, state):
            n_steps = len(state["steps"])
            state, carry, events = strategy.update(problem, state, ev, carry)
            for e in events:
                log.info(e)
            if strategy.done(problem, state) or len(state["steps"]) != n_steps or \
                    time.perf_counter() - t_ck >= checkpoint_every_s:
                index = _save_carry(ckpt_npz, carry)
                atomic_write(ckpt, json.dumps({"key": key, **state, "int8_index": index}))
                t_ck = time.perf_counter()
            bar.update(1)
            bar.set_postfix(float_layers=len(state["fp_list"]), refresh=False)
        bar.close()
        t_done = time.perf_counter()
        float_layers = list(dict.fromkeys(state["fp_list"]))  # a layer set float twice is written once
        true_mix = true_similarity(problem, float_layers)
        files = _write_qtable_outputs(problem, state, float_layers, out_dir, qtable_path, loss_table, log)
        summary = {
            "all_int8_similarity": all_int8, "reported_mix_similarity": state["outputs_cos"],
            "true_mix_similarity": true_mix, "end": state["end"], "exception": state["exception"],
            "n_float_layers": len(float_layers), "max_float_layers": state["max_fp_layers"],
            "n_images": problem.n, "expected_cos": expected_cos, "min_layer_cos": min_layer_cos,
            "n_steps": len(state["steps"]), "n_reverted": sum(s["reverted"] for s in state["steps"]),
            "similarity_scale": "0.5+0.5*cos (TPU-MLIR)",
            "note": "reported_mix_similarity is TPU-MLIR's 'mix model outputs_cos' (the last step's, possibly "
                    "reverted or failed); true_mix_similarity is the qtable's model on the same images",
        }
        timings = {"int8_model_s": t_int8 - t_start, "search_s": t_done - t_search,
                   "total_s": time.perf_counter() - t_start, "compile": stats.as_dict()}
        log.info(f"total time:{timings['total_s']}")
        res = QtableResult(False, all_int8, state["outputs_cos"], true_mix, float_layers, state, summary, timings, files)
        plot_safely(lambda p: plot_layer_cos(res, p, min_layer_cos), os.path.join(out_dir, "layer_cos.png"), echo,
                    files)
        files["qtable_json"] = os.path.join(out_dir, "qtable.json")
        atomic_write(files["qtable_json"], json.dumps(res.to_json(), indent=1) + "\n")
        for p in (ckpt, ckpt_npz):
            if os.path.exists(p):
                os.remove(p)
        return res
    finally:
        _close_logger(log)


def _make_logger_named(out_dir: str, name: str, append: bool) -> logging.Logger:
    log = logging.getLogger(f"qsens.{name}.{id(out_dir)}.{time.time_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    h = logging.FileHandler(os.path.join(out_dir, name), mode="a" if append else "w")
    h.setFormatter(logging.Formatter("%(levelname)s:root:%(message)s"))
    log.addHandler(h)
    return log


def _write_qtable_outputs(problem: Problem, state: dict, float_layers: list[str], out_dir: str, qtable_path: str,
                          loss_table: str, log) -> dict:
    """TPU-MLIR's ``print_log_info``: the loss table (ascending layer cos), the qtable, the result lines."""
    from ..tables import qtable_header_lines, write_qtable

    n = problem.n
    log.info(">>>run result:")
    rows = sorted(state["layer_cos"], key=lambda r: r[1])
    lpath = loss_table if os.path.isabs(loss_table) else os.path.join(out_dir, loss_table)
    chip = problem.plan.chip.name.lower()
    ft = problem.plan.float_type
    head = [h for h in qtable_header_lines(sample_number=n, chip=chip, mix_mode=ft, count=0)
            if not h.startswith(("# number of", "# op_name"))]
    lines = []
    for k, (name, cos) in enumerate(rows):
        msg = f"No.{k:<4}: Layer: {name:<50}\t\t\tCos: {cos:.6f}"
        lines.append(msg)
        log.info(msg)
    os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
    atomic_write(lpath, "\n".join(head + lines) + "\n")
    qpath = qtable_path if os.path.isabs(qtable_path) else os.path.join(out_dir, qtable_path)
    os.makedirs(os.path.dirname(os.path.abspath(qpath)), exist_ok=True)
    write_qtable(qpath, [(name, ft) for name in float_layers], sample_number=n, chip=chip, mix_mode=ft)
    log.info(f"int8 outputs_cos:{state['all_int8_cos']:.6f} old")
    log.info(f"mix model outputs_cos:{state['outputs_cos']:.6f}")
    log.info(f"Output mix quantization table to {qtable_path}")
    return {"qtable": qpath, "loss_table": lpath, "log": os.path.join(out_dir, QTABLE_LOG)}


def plot_layer_cos(result: QtableResult, path: str, min_layer_cos: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.state["layer_cos"]
    names = [r[0] for r in rows]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.22), 4.5))
    ax.plot(x, [max(1 - r[1], 1e-9) for r in rows], marker="o", ms=3, lw=1, label="1 - layer cos (INT8 prefix)")
    ax.axhline(max(1 - min_layer_cos, 1e-9), color="gray", ls="--", lw=1, label="1 - min_layer_cos")
    steps = {s["op"]: s for s in result.state["steps"]}
    for j, n in enumerate(names):
        if n in steps:
            ax.axvline(j, color="orange" if steps[n]["reverted"] else "red", alpha=0.3, lw=4)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_title(f"mix-precision search: INT8 {result.all_int8_similarity:.4f} -> qtable model "
                 f"{result.true_mix_similarity:.4f}, {len(result.float_layers)} float layers "
                 f"(steps red, reverted orange; end: {result.state['end']})", fontsize=8)
    ax.legend(fontsize=8)
    save_figure(fig, path)
