"""``qsens calibrate``: streaming statistics over the calibration set, thresholds of every method, the
SimpleTuner, and TPU-MLIR calibration tables.

What runs where (measured on the 2-core CPU, README "Performance"):

* the float forward runs op by op through :class:`qsens.engine.Engine` (shared per-signature executables),
  keeping every canonical tensor of one batch;
* the statistics (:mod:`qsens.calib.stats`, on a worker thread while the next batch runs forward) are host NumPy
  -- min/max, percentile tails, MSE (only when asked for) -- except the histograms' bin counts, which are one
  jit-compiled scatter-add per call on the device (:func:`qsens.calib.histogram.histogram_rows`, bit-identical
  to NumPy; ``v1``: an exact abs-max pass, then histograms of one width, order-independent; ``v2``: TPU-MLIR's
  per-sample streaming merge, its rules on the host) -- memory does not grow with ``input_num``; beside a v2
  state (``qsens search``) v1's second pass takes the v2 histograms whose range never grew and histograms
  activations kept from the first pass (:class:`PassOneKeeper`), so it often needs no second forward;
  activations are consumed in the engine's layout (NHWC for channel-last tensors): every statistic is
  invariant to the element order within a sample;
* the SimpleTuner (:func:`tune`) evaluates each op alone, in float, on its inputs fake-quantized on the device
  (:func:`fake_quant_rows`, bit-identical to the NumPy oracle :func:`fake_quant_np`) for each of the 22
  candidate thresholds x ``tune_num`` samples: these rows
  are stacked along the batch axis and run ``batch`` rows per call through the op's float executable, the
  same per-signature jit the calibration forward uses (no vmap; nothing new is compiled at the calibration's
  batch size); the distances are computed on the host in float64.

Decision (spec §2.6 "to verify"): the tuner runs ops with float weights (TPU-MLIR's
``fake_quant_weight`` copies the weight buffer before rounding it, so it leaves the weights unchanged).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from . import calib
from .engine import DEFAULT_CHUNK, CompileStats, Engine, pad_batch, to_device
from .errors import QsensError
from .exe_cache import persistent_jit
from .onnx.convert import Model
from .pipeline import iter_inputs

#: bytes of activations ``qsens search``'s calibration keeps from pass 1 for v1's pass 2 (:class:`PassOneKeeper`; none
#: under ``--max_memory``): Lite0 at 100 images needs 300 MiB to skip the second forward
PASS1_KEEP_BYTES = 384 * 2**20

#: threads that run the calibration statistics beside the forward (:func:`collect_statistics_multi`): with one, the
#: statistics were the critical path of ``qsens search``'s calibration on 2 cores (the forward waited ~40 % of it)
STAT_WORKERS = 2

#: threads that score the tuner's rows (float64 on the host) while the main thread dispatches the next chunk
TUNE_WORKERS = 2

METHODS = ("max", "percentile9999", "kl", "mse")
#: Method spelling of the docs-era sensitive-layer search (SL-old) and its log lines.
SL_NAMES = {"max": "MAX", "percentile9999": "Percentile9999", "kl": "KL", "mse": "MSE"}


def parse_method(m: str) -> str:
    k = m.strip().lower().removeprefix("use_")
    k = {"percentile": "percentile9999", "p9999": "percentile9999"}.get(k, k)
    if k not in METHODS:
        raise QsensError(f"unknown calibration method {m!r}; use one of {', '.join(METHODS)}")
    return k


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of one statistics pass: per-tensor statistics and per-method thresholds."""

    tensors: tuple[str, ...]
    stats: dict[str, calib.CalibResult]
    untuned: dict[str, dict[str, float]]  # method -> tensor -> threshold (as written to <table>_<m>.1)
    tuned: dict[str, dict[str, float]]  # method -> tensor -> threshold after SimpleTuner
    n_samples: int
    tune_num: int
    hist: str
    timings: dict[str, float]

    def minmax(self, method: str, tensor: str) -> tuple[float, float]:
        r = self.stats[tensor]
        if method == "percentile9999":
            return float(r.p99_min), float(r.p99_max)
        return float(r.min), float(r.max)

    def table_entries(self, method: str, tuned: bool = True) -> dict[str, tuple[float, float, float]]:
        ths = (self.tuned if tuned else self.untuned)[method]
        return {t: (ths[t],) + self.minmax(method, t) for t in self.tensors}

    # JSON round trip (a finished calibration phase of a job, reused by --resume).  Exact: every value is a
    # float32/float64 scalar, written with repr; the histograms are not kept (no table or search reads them).
    _SCALARS = ("min", "max", "abs_max", "kl", "p99", "p99_min", "p99_max", "mse", "width")

    def to_json(self) -> dict:
        f = lambda d: {k: float(v) for k, v in d.items()}  # noqa: E731
        return {"tensors": list(self.tensors), "n_samples": self.n_samples, "tune_num": self.tune_num,
                "hist": self.hist, "untuned": {m: f(d) for m, d in self.untuned.items()},
                "tuned": {m: f(d) for m, d in self.tuned.items()},
                "stats": {t: {k: float(getattr(r, k)) for k in self._SCALARS} for t, r in self.stats.items()}}

    @classmethod
    def from_json(cls, d: dict) -> Calibration:
        stats = {t: calib.CalibResult(histogram=np.zeros(0, np.float32), **v) for t, v in d["stats"].items()}
        return cls(tuple(d["tensors"]), stats, d["untuned"], d["tuned"], d["n_samples"], d["tune_num"], d["hist"], {})


def _progress(total: int, desc: str, enabled: bool, unit: str = "img"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def collect_statistics(model: Model, files, pp, *, methods: Sequence[str], hist: str = "v1", batch: int = 30,
                       progress: bool = True, stats: CompileStats | None = None, tune_num: int = 0
                       ) -> tuple[dict[str, calib.CalibResult], dict[str, np.ndarray]]:
    """Statistics of every canonical tensor over ``files``, streamed op by op (only live tensors are kept).

    ``hist="v1"`` (the default) reads ``files`` twice (abs-max pass, then histograms); ``"v2"`` once.

    Returns ``(results, tune_acts)``: ``tune_acts`` holds every tensor of the first ``tune_num`` samples
    (engine layout) for the SimpleTuner.
    """
    (res,), tune_acts = collect_statistics_multi(model, files, pp, specs=[(methods, hist)], batch=batch,
                                                 progress=progress, stats=stats, tune_num=tune_num)
    return res, tune_acts


def collect_statistics_multi(model: Model, files, pp, *, specs: Sequence[tuple[Sequence[str], str]], batch: int = 30,
                             progress: bool = True, stats: CompileStats | None = None, tune_num: int = 0,
                             n_bins: int = calib.N_BINS, keep_bytes: int = 0
                             ) -> tuple[list[dict[str, calib.CalibResult]], dict[str, np.ndarray]]:
    """Several statistics (``specs``: ``(methods, hist)`` each) from the same forward passes: every state sees
    the same per-sample activations in the same order as it would alone, so each result equals
    :func:`collect_statistics` of its spec (a v1 state takes two passes, a v2 state the first one).

    A v1 spec beside a v2 spec (``qsens search``) needs less of its second pass: the v2 histograms whose range never
    grew are v1's (:func:`qsens.calib.adopt_v2_histograms`), and of the others, the activations pass 1 kept
    (:class:`PassOneKeeper`, at most ``keep_bytes``) are histogrammed from memory; the forward of pass 2 runs only
    up to the last op whose tensor still needs it, or not at all."""
    g = model.graph
    tensors = g.tensors
    op_index = {t: g.index(g.producer(t).name) for t in tensors}
    n = len(files)
    engine = Engine(model, batch, stats=stats)
    states = [calib.init(tensors, len(g.ops), n_samples=n, op_index=op_index, mode=hist, n_bins=n_bins,
                         absmax_mse=g.inputs, mse="mse" in methods,
                         mse_tail=[(t, g.producer(t).type in ("Conv", "MatMul")) for t in tensors[-5:][::-1]],
                         tails="percentile9999" in methods)
              for methods, hist in specs]
    tune_acts: dict[str, np.ndarray] = {}
    v1s = [k for k, (_, h) in enumerate(specs) if h == "v1"]
    v2k = next((k for k, (_, h) in enumerate(specs) if h == "v2"), None)
    keeper = PassOneKeeper(g, n, keep_bytes) if v1s and v2k is not None and keep_bytes > 0 else None
    # the statistics of each tensor run on one of STAT_WORKERS FIFO threads (tensors dealt round-robin in graph
    # order, so a tensor's batches stay in order): each thread updates its own copy of the states, whose entries
    # of the other threads' tensors it never touches, and the copies are merged tensor by tensor after each pass
    worker_of = {t: k % STAT_WORKERS for k, t in enumerate(tensors)}

    def fold(boxes, t, a, off, active):
        box = boxes[worker_of[t]]
        sts = list(box["states"])
        for j, st in zip(active, calib.update_many([sts[j] for j in active], {t: a}, off)):
            sts[j] = st
        box["states"] = sts
        return sts

    def merged(boxes):
        return [st._replace(tensors={t: boxes[worker_of[t]]["states"][j].tensors[t] for t in st.tensors})
                for j, st in enumerate(states)]

    def forward(label, boxes, workers, consume, need=None, stop=None):
        """One pass of the float forward over ``files``: every tensor made (``need``: those in it) to ``consume``."""
        bar = _progress(n, label, progress)
        off = 0
        for inp in iter_inputs(files, engine.graph, pp, batch):
            inp, k = pad_batch(inp, batch)

            def submit(t, v, k=k, off=off):
                if need is None or t in need:
                    workers.submit(worker_of[t], consume, boxes, t, v, k, off)

            env = engine.input_env(inp)
            for t in engine.graph.inputs:
                submit(t, env[t])
            engine.run(env, stop=stop, on_output=submit)
            off += k
            if bar:
                bar.update(k)
        if bar:
            bar.close()

    # pass 1: every state (v1's ranges, percentile tails, MSE; v2's histograms)
    every = list(range(len(specs)))

    def consume1(boxes, t, v, k, off):
        a = np.asarray(v)[:k]
        take = min(k, tune_num - off)
        if take > 0:  # the tuner's samples: the first tune_num, whatever the batch size
            part = a[:take].copy()
            tune_acts[t] = part if t not in tune_acts else np.concatenate([tune_acts[t], part])
        sts = fold(boxes, t, a, off, every)
        if keeper is not None:
            keeper.offer(t, a, off, sts[v2k].tensors[t].hist)

    boxes = [{"states": states} for _ in range(STAT_WORKERS)]
    with Workers(STAT_WORKERS) as workers:
        forward("calibration pass 1/2" if v1s else "calibration", boxes, workers, consume1)
    states = merged(boxes)
    if not v1s:
        return [calib.finalize(st) for st in states], tune_acts
    # pass 2: v1's histograms at the final ranges, of the tensors no v2 state holds already
    states = [calib.begin_histograms(st) if h == "v1" else st for st, (_, h) in zip(states, specs)]
    adopted = {j: frozenset() for j in v1s}
    if v2k is not None:
        for j in v1s:
            states[j], adopted[j] = calib.adopt_v2_histograms(states[j], states[v2k])
    todo = {t: [j for j in v1s if t not in adopted[j]] for t in tensors}
    todo = {t: js for t, js in todo.items() if js}
    replay = keeper.take(todo) if keeper is not None else {}
    need = {t for t in todo if t not in replay}
    boxes = [{"states": states} for _ in range(STAT_WORKERS)]
    with Workers(STAT_WORKERS) as workers:
        for t, parts in replay.items():  # kept in pass 1: histogrammed from memory
            for off, a in parts:
                workers.submit(worker_of[t], fold, boxes, t, a, off, todo[t])
        if need:  # the forward again, up to the last op whose tensor still needs a histogram

            def consume2(boxes, t, v, k, off):
                fold(boxes, t, np.asarray(v)[:k], off, todo[t])

            forward("calibration pass 2/2", boxes, workers, consume2, need, max(op_index[t] for t in need) + 1)
    states = merged(boxes)
    return [calib.finalize(st) for st in states], tune_acts


class PassOneKeeper:
    """Activations pass 1 keeps for v1's pass 2 (:func:`collect_statistics_multi`), at most ``cap`` bytes.

    Which tensors: those a v2 state may not hold v1's histogram of at the end.  Decided from the graph before the
    pass for tensors without a static bound (the last ones first: pass 2's forward stops after the last tensor it
    still needs), and at a bounded tensor's first batch for the rest: a ReLU6 output whose v2 range already is its
    bound (6) can never grow, so v2 will hold its histogram; one that is not there yet is kept while the cap allows.
    Only speed depends on these choices: :func:`qsens.calib.adopt_v2_histograms` decides, exactly, at the end, and a
    tensor that was not kept is histogrammed by a second forward as before.  Thread-safe (the statistics workers)."""

    def __init__(self, graph, n_samples: int, cap: int):
        import threading

        self.n = n_samples
        self.bound: dict[str, np.float32 | None] = {}
        for t in graph.tensors:
            lim = graph.producer(t).relu_bound()
            self.bound[t] = None if lim is None else np.float32(lim)
        self.nbytes = {t: n_samples * int(np.prod(graph.tensor_shape(t)[1:], dtype=np.int64)) * 4 for t in graph.tensors}
        self.kept: dict[str, list] = {}
        left = cap
        for t in sorted((t for t in graph.tensors if self.bound[t] is None),
                        key=lambda t: -graph.index(graph.producer(t).name)):
            if self.nbytes[t] <= left:
                self.kept[t] = []
                left -= self.nbytes[t]
        self.left = left
        self.decided = set(self.kept)
        self._lock = threading.Lock()

    def offer(self, t: str, a: np.ndarray, off: int, v2_hist) -> None:
        """Batch ``a`` (samples ``off``...) of tensor ``t``, with ``t``'s v2 histogram state after it."""
        if t not in self.decided:
            self.decided.add(t)
            b = self.bound[t]
            if b is not None and v2_hist.th == b and not v2_hist.grown:  # at its bound: v2 will hold it
                return
            with self._lock:
                if self.nbytes[t] > self.left:
                    return
                self.left -= self.nbytes[t]
            self.kept[t] = []
        if t in self.kept:
            self.kept[t].append((off, a))

    def take(self, needed) -> dict[str, list]:
        """The kept batches of the ``needed`` tensors (every sample seen); the rest are let go."""
        out = {t: v for t, v in self.kept.items() if t in needed and sum(len(a) for _, a in v) == self.n}
        self.kept = {}
        return out


class Workers:
    """``n`` :class:`Background` threads: ``submit(k, fn, *args)`` runs on thread ``k`` (FIFO per thread).  An
    exception surfaces as the inline run would raise it: the one of the earliest *submitted* call that failed
    (every call submitted before it has finished by then), in the caller at the next submit or on exit.  ``depth``
    bounds the waiting calls of all threads together (each holds one op's output: the memory one thread had)."""

    def __init__(self, n: int, depth: int = 4):
        self._bgs = [Background(max(1, depth // n)) for _ in range(n)]
        self._seq = 0
        self._errors: list[tuple[int, BaseException]] = []

    def _run(self, seq: int, fn, args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller, in submission order
            self._errors.append((seq, e))

    def submit(self, k: int, fn, *args) -> None:
        if self._errors:
            self._raise_first()
        self._seq += 1
        self._bgs[k].submit(self._run, self._seq, fn, args)

    def _raise_first(self) -> None:
        for bg in self._bgs:
            bg.drain()
        raise min(self._errors, key=lambda e: e[0])[1]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self._errors:
                self._raise_first()
        finally:
            for bg in self._bgs:
                bg.__exit__(exc_type, exc, tb)
        return False


class Background:
    """One worker thread that runs submitted calls in order (FIFO), beside the caller.

    Calibration statistics (histogram counts on the device, NumPy tails and MSE sums: GIL released in the loops)
    run on it while the main thread dispatches the next op's forward, so both cores work.  The order of the calls,
    and so every statistic, is the same as running them inline; at most ``depth`` calls wait (bounded memory: each
    holds one op's output); the first exception is raised in the caller (at the next submit or on exit)."""

    def __init__(self, depth: int = 4):
        import concurrent.futures as cf

        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="qsens-calib")
        self._pending: list = []
        self.depth = depth

    def submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self.depth or (self._pending and self._pending[0].done()):
            self._pending.pop(0).result()  # waits; re-raises the call's exception here

    def drain(self) -> None:
        """Wait for every submitted call (re-raising the first exception)."""
        while self._pending:
            self._pending.pop(0).result()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                for f in self._pending:
                    f.result()
        finally:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)
        return False


def round_table(th: float) -> float:
    """A threshold as TPU-MLIR reads it back from a table written with ``%.7f``."""
    return float(f"{th:.7f}")


def fake_quant_np(x: np.ndarray, th: float) -> np.ndarray:
    """The tuner's fake quantization on the host (numpy: round half to even, as TPU-MLIR's Python tuner)."""
    scale = np.float32(127.0 / th)
    return (np.clip(np.round(x * scale), -128, 127) / scale).astype(np.float32)


@persistent_jit(("qsens.calibrate.fake_quant_rows", 1))
def fake_quant_rows(src, idx, scale):
    """``fake_quant_np(src[idx[r]], th_r)`` for every row ``r`` on the device, bit for bit: ``scale`` holds
    ``np.float32(127.0 / th_r)`` computed on the host (float64 division, then float32, as the NumPy path), and
    ``jnp.round`` is round half to even like ``np.round``.  Used by :func:`tune` (the rows of one executable call:
    (candidate, sample) pairs gathered from the device-resident tune activations)."""
    x = src[idx]
    s = scale.reshape((-1,) + (1,) * (x.ndim - 1))
    # XLA's algebraic simplifier rewrites a division by a broadcast into a multiplication by the broadcast
    # reciprocal, which is not IEEE division (1 ulp off, e.g. 2.5 at th 63.6); ``x * 0 + s`` equals ``s`` for the
    # finite tune activations and is no broadcast, so the exact float32 division NumPy does stays
    # (:func:`qsens.calib.histogram._counts` does the same)
    return jnp.clip(jnp.round(x * s), -128.0, 127.0) / (x * jnp.float32(0) + s)


class TuneStream(Mapping):
    """The tune samples' float activations made on demand, op by op, instead of kept for every tensor.

    ``stream[t]`` (rows = the first ``n_t`` samples of ``files``) advances a forward of the first
    ``ceil(n_t / batch)`` batches of ``files`` up to ``t``'s producer, keeping only live tensors and that op's
    inputs; :func:`tune` walks the ops in order and asks for an op's output, then its inputs, so nothing else is
    needed.  The batches are the ones the statistics pass ran (same files, same padding, same executables), so
    the values are the kept ones bit for bit (``tests/test_calibrate.py``).  Memory: one op's live set of one or
    two batches instead of every tensor of the tune samples (ResNet-50: 324 MB).  Cost: one more float forward
    of those batches per :func:`tune` call.  A fresh stream per :func:`tune` call (it only walks forward)."""

    def __init__(self, model: Model, files: Sequence[str], pp, n_t: int, *, batch: int,
                 stats: CompileStats | None = None):
        self.engine = Engine(model, batch, stats=stats)
        g = self.graph = self.engine.graph
        self.n_t = n_t
        self.prod = {t: (0 if t in g.inputs else g.index(g.producer(t).name)) for t in g.tensors}
        self.envs = []
        for inp in iter_inputs(files, g, pp, batch):
            if len(self.envs) * batch >= n_t:
                break
            self.envs.append(self.engine.input_env(pad_batch(inp, batch)[0]))
        self.next = 0

    def _advance(self, stop: int) -> None:
        g, last = self.graph, self.graph.last_use
        while self.next <= stop:
            i = self.next
            op = g.ops[i]
            if op.type != "Input":
                self.envs = [self.engine.run(env, i, i + 1, keep=set(op.inputs)) for env in self.envs]
                made = set(op.outputs)
                # op i's inputs stay for this step's requests; tensors no op from i on reads go now
                self.envs = [{t: v for t, v in env.items() if last.get(t, -1) >= i or t in made} for env in self.envs]
            self.next = i + 1

    def __getitem__(self, t: str) -> np.ndarray:
        self._advance(self.prod[t])
        return np.concatenate([np.asarray(env[t]) for env in self.envs])[: self.n_t]

    def __iter__(self):
        return iter(self.prod)

    def __len__(self) -> int:
        return len(self.prod)


def tune_plan(graph, initial: Mapping[str, float], amax: Mapping[str, float], steps: int = calib.TUNE_STEPS
              ) -> list[tuple[int, list[tuple[str, np.ndarray]]]]:
    """What :func:`tune` evaluates, in its order: ``[(op index, [(tensor, candidate grid), ...]), ...]``.

    SimpleTuner's walk: for each op whose inputs are not all tuned yet, every untuned input is tuned; otherwise
    ``op.inputs[0]`` is tuned again; a tensor whose grid is empty (``--debug_cmd tune_steps``, ``amax`` at or
    below the initial threshold: every MAX / Percentile table) is marked tuned and skipped.  The walk depends on the
    graph, the initial thresholds and ``amax`` only, not on any distance, so it is known before the first
    evaluation (``benchmarks/floors.py`` counts the tuner's work from it).  Ops with nothing to evaluate are left
    out."""
    tuned: set[str] = set()
    plan = []
    for i, op in enumerate(graph.ops):
        if op.type == "Input" or not op.inputs:
            continue
        todo = [op.inputs[0]] if all(t in tuned for t in op.inputs) else [t for t in op.inputs if t not in tuned]
        tuned.update(todo)
        grids = [(t, calib.tune_candidates(initial[t], amax[t], steps)) for t in todo]  # --debug_cmd tune_steps=N
        grids = [(t, c) for t, c in grids if c.size]
        if grids:
            plan.append((i, grids))
    return plan


def tune(model: Model, tune_acts: Mapping[str, np.ndarray], table: dict[str, float], amax: dict[str, float], *,
         batch: int = 30, stats: CompileStats | None = None, progress: bool = False,
         steps: int = calib.TUNE_STEPS, memo: dict | None = None) -> dict[str, float]:
    """SimpleTuner (spec §2.6) over the canonical op list; returns the tuned table (thresholds only grow).

    ``table``: the thresholds to tune (every evaluation starts its grid from these initial values, as TPU-MLIR
    1.23 does); ``amax``: the grid's upper end per tensor; ``tune_acts``: the FP32 activations of the tune
    samples (engine layout), inputs and references alike.  For each op whose inputs are not all tuned yet,
    every untuned input is tuned; otherwise ``op.inputs[0]`` is tuned again.  Per candidate ``c``
    (:func:`qsens.calib.tune_candidates`) ALL inputs of the op are fake-quantized with ``c`` on the device
    (:func:`fake_quant_rows`, bit-identical to the host oracle :func:`fake_quant_np`, from the tune samples put on
    the device once per op); the (candidate, sample) rows are stacked along the batch axis and run ``batch``
    rows per call through the op's float executable (the calibration forward's executables, so at the
    calibration's ``batch`` nothing new is compiled but one small fake-quant executable per activation shape).
    Distance per sample ``||ref - out||_2 / ||ref||_1`` in
    float64 on the host (TPU-MLIR's norms are float32: this can only matter for near-ties), mean over the
    samples; the choice and the upward-only update are :func:`qsens.calib.select`.

    ``memo`` (one dict shared by several calls on the same ``tune_acts`` and ``batch``, as :func:`calibrate_multi`
    does for its tables): an op's distances depend only on the op and the candidate grid, not on the table they
    update, so a grid evaluated for another table is read back, not run again (the same numbers: same rows,
    same executables).
    """
    engine = Engine(model, batch, stats=stats)
    g = engine.graph
    table = dict(table)
    initial = dict(table)  # TPU-MLIR 1.23 SimpleTuner: every (re)tune starts from the initial threshold
    plan = dict(tune_plan(g, initial, amax, steps))  # op index -> [(tensor, grid)]
    bar = _progress(len(g.ops) - 1, "tuning", progress, unit="op")
    for i, op in enumerate(g.ops):
        if op.type == "Input":
            continue
        if bar:
            bar.update(1)
        if i not in plan:  # nothing of this op is tuned (MAX / Percentile tables: the grid is empty everywhere)
            continue
        prep = None
        for t, cands in plan[i]:
            key = (i, cands.tobytes())
            if memo is not None and key in memo:  # the same op and grid in another table's tuner run
                table[t] = float(calib.select(initial[t], cands, memo[key], current=table[t]))
                continue
            if prep is None:  # once per op, not per (candidate, sample)
                ref = tune_acts[op.outputs[0]]
                n_t = ref.shape[0]
                ref_l1 = np.abs(ref.reshape(n_t, -1)).sum(axis=1, dtype=np.float64)
                ref64 = [ref[j].astype(np.float64).ravel() for j in range(n_t)]
                prep = (engine.float_exe(i), engine.weights(op), [to_device(tune_acts[x]) for x in op.inputs])
            fn, w, srcs = prep
            # rows (candidate, sample), fake-quantized lazily one chunk at a time (memory: one chunk)
            flat = [(ci, j) for ci in range(len(cands)) for j in range(n_t)]
            per = np.empty(len(flat))

            def finish(s0, chunk, out_dev, ref64=ref64, ref_l1=ref_l1, per=per):
                out = np.asarray(out_dev)
                for r, (_, j) in enumerate(chunk):  # ||ref - out||_2 / ||ref||_1, per sample, float64
                    per[s0 + r] = calib.host_distance(ref64[j], ref_l1[j], out[r])

            # host float64 -> float32 scales, as fake_quant_np computes them
            scales = np.array([np.float32(127.0 / float(c)) for c in cands], np.float32)
            # pipeline: TUNE_WORKERS threads score the earlier chunks (NumPy float64, GIL released; chunks dealt
            # round-robin) while this thread dispatches chunk s; every row writes its own slot of ``per``, so the
            # values are the same as in order
            with Workers(TUNE_WORKERS) as bg:
                for s0 in range(0, len(flat), batch):
                    chunk = flat[s0 : s0 + batch]
                    rows = chunk + [chunk[-1]] * (batch - len(chunk))  # a short chunk repeats its last row
                    idx = np.array([j for _, j in rows], np.int32)
                    sc = scales[[ci for ci, _ in rows]]
                    acts = [fake_quant_rows(src, idx, sc) for src in srcs]
                    bg.submit((s0 // batch) % TUNE_WORKERS, finish, s0, chunk, engine.call(fn, w, acts)[0])
            dists = per.reshape(len(cands), n_t).mean(axis=1)
            if memo is not None:
                memo[key] = dists
            table[t] = float(calib.select(initial[t], cands, dists, current=table[t]))  # thresholds only grow
    if bar:
        bar.close()
    return table


def calibrate(model: Model, files: Sequence[str], pp, *, methods: Sequence[str] = ("kl",), hist: str = "v1",
              tune_num: int = 5, tune_methods: Sequence[str] | None = None, batch: int | None = None,
              progress: bool = True, stats: CompileStats | None = None, **kw) -> Calibration:
    """Statistics over ``files`` and thresholds of ``methods``; SimpleTuner on the first ``tune_num`` samples.

    ``hist`` defaults to ``"v1"`` here (run_sensitive_layer's per-method tables, ``qsens search --hist``'s
    default); ``qsens calibrate`` passes its ``--hist`` whose default is ``"v2"`` (run_calibration), and
    ``qsens search`` calibrates its base table with ``"v2"``.  ``batch`` defaults to ``min(10, len(files))``.
    ``tune_methods`` (default: ``["kl"]`` like run_calibration; the sensitive-layer search tunes every method,
    which changes only KL/MSE: MAX and Percentile are their own upper bound) are tuned, the rest are copied.
    """
    return calibrate_multi(model, files, pp, specs=[(methods, hist, tune_methods)], tune_num=tune_num, batch=batch,
                           progress=progress, stats=stats, **kw)[0]


def calibrate_multi(model: Model, files: Sequence[str], pp, *, specs: Sequence[tuple], tune_num: int = 5,
                    batch: int | None = None, progress: bool = True, stats: CompileStats | None = None,
                    n_bins: int = calib.N_BINS, tune_files: Sequence[str] | None = None,
                    tune_steps: int = calib.TUNE_STEPS, stream_tune: bool = False, keep_bytes: int = 0
                    ) -> list[Calibration]:
    """:func:`calibrate` for several ``(methods, hist, tune_methods)`` specs from the same forward passes (one
    image decode and one forward per pass for all of them); each result equals its own :func:`calibrate`.
    ``qsens search`` uses it for run_sensitive_layer's v1 method tables and run_calibration's v2 base table.

    TPU-MLIR's flags: ``n_bins`` = ``--histogram_bin_num`` (KL's histograms); ``tune_files`` = the samples of
    ``--tune_list`` (the SimpleTuner runs on them instead of the first ``tune_num`` calibration samples: TPU-MLIR
    1.23 ``run_calibration.py`` builds ``tune_ds`` from the list, ``tune_num`` = its length); ``tune_steps`` =
    ``--debug_cmd tune_steps=N`` (the tuner's grid, default 21 steps).  ``stream_tune``: the tuner's activations
    are recomputed op by op (:class:`TuneStream`) instead of kept for every tensor: the same tables, less memory,
    one more forward of the tune batches per tuned method (``qsens search`` does this under ``--max_memory``).
    ``keep_bytes``: activations pass 1 may keep for a v1 spec's pass 2 (:func:`collect_statistics_multi`)."""
    if not files:
        raise QsensError("no calibration samples")
    specs = [([parse_method(m) for m in ms], h, ["kl"] if tm is None else [parse_method(m) for m in tm])
             for ms, h, tm in specs]
    for _, h, _ in specs:
        if h not in ("v1", "v2"):
            raise QsensError(f"--hist must be v1 or v2, got {h!r}")
    t0 = time.perf_counter()
    batch = min(DEFAULT_CHUNK, len(files)) if batch is None else batch
    n_tune = min(tune_num, len(files)) if any(m in tm for ms, _, tm in specs for m in ms) else 0
    if tune_files:
        n_tune = len(tune_files) if any(m in tm for ms, _, tm in specs for m in ms) else 0
    results, tune_acts = collect_statistics_multi(model, files, pp, specs=[(ms, h) for ms, h, _ in specs],
                                                  batch=batch, progress=progress, stats=stats,
                                                  tune_num=0 if (tune_files or stream_tune) else n_tune, n_bins=n_bins,
                                                  keep_bytes=keep_bytes)
    if tune_files and n_tune and not stream_tune:  # the tuner's own samples (--tune_list): one more float pass
        _, tune_acts = collect_statistics_multi(model, list(tune_files), pp, specs=[(["max"], "v2")], batch=batch,
                                                progress=False, stats=stats, tune_num=n_tune)
    t1 = time.perf_counter()
    g = model.graph
    out = []
    memo: dict = {}  # the tuner's distances per (op, grid): shared by every table's run (same samples, same batch)
    for (methods, hist, tune_methods), res in zip(specs, results):
        t2 = time.perf_counter()
        untuned = {m: {t: calib.table_threshold(res[t].threshold(m)) for t in g.tensors} for m in methods}
        # thresholds as the tools downstream read them back from the %.7f tables (the tuner may refine KL/MSE)
        tuned = {m: {t: round_table(v) for t, v in ths.items()} for m, ths in untuned.items()}
        n_t = n_tune if any(m in tune_methods for m in methods) else 0
        if n_t > 0:
            for m in methods:
                if m not in tune_methods:
                    continue
                start = tuned[m]
                amax = {t: (res[t].p99 if m == "percentile9999" else res[t].abs_max) for t in g.tensors}
                acts = (TuneStream(model, list(tune_files or files), pp, n_t, batch=batch, stats=stats) if stream_tune
                        else {t: v[:n_t] for t, v in tune_acts.items()})
                tuned[m] = tune(model, acts, start, amax, batch=batch, stats=stats, progress=progress,
                                steps=tune_steps, memo=memo)
        out.append(Calibration(tuple(g.tensors), res, untuned, tuned, len(files), n_t, hist,
                               {"statistics_s": t1 - t0, "tune_s": time.perf_counter() - t2}))
    return out


#: run_sensitive_layer's names for its per-method tables (``<table>_KL.1``, ``<table>_MAX_tune``, ...)
SENSITIVE_NAMES = SL_NAMES


def write_tables(cal: Calibration, out: str, *, main_method: str | None, mlir: str, write_method_tables: bool = True,
                 method_names: dict[str, str] | None = None, version_style: str | None = None,
                 histogram_bins: int = 2048) -> list[str]:
    """Write ``out`` (main method, tuned; run_calibration's header) unless ``main_method`` is None, and
    ``<out>_<method>.1`` / ``<out>_<method>_tune`` for every method (``method_names`` renames them, e.g.
    :data:`SENSITIVE_NAMES` for run_sensitive_layer's files and header style)."""
    from .tables import write_cali_table

    written = []
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    style = version_style or ("kld-old" if method_names else "kld-mid")
    for m in cal.untuned:
        if write_method_tables:
            # TPU-MLIR 1.30.2 (kld-new) prints the tune number in the .1 table too
            first_tn = cal.tune_num if style == "kld-new" else None
            for suffix, tuned, tn in ((".1", False, first_tn), ("_tune", True, cal.tune_num)):
                p = f"{out}_{(method_names or {}).get(m, m)}{suffix}"
                write_cali_table(p, cal.table_entries(m, tuned), method=m, mlir=mlir, histogram_bins=histogram_bins,
                                 sample_number=cal.n_samples, tune_number=tn, version_style=style)
                written.append(p)
    if main_method is not None:
        write_cali_table(out, cal.table_entries(main_method, True), method=main_method, mlir=mlir,
                         histogram_bins=histogram_bins, sample_number=cal.n_samples,
                         tune_number=cal.tune_num or None,  # untuned: no tune line (1.23, tests/fixtures/tpu_mlir_flags)
                         version_style="kld-mid")
        written.append(out)
    return written
