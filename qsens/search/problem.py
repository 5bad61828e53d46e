"""The search problem: everything fixed while a search runs, and the scorer.

A :class:`Problem` holds the converted model, its :class:`~qsens.quant.mixed.QuantPlan` (signedness, copy
map, F32 ops of the INT8 model), the base thresholds of the calibration table, the inference images (split
into chunks of ``chunk`` images, the last one padded by repeating its last image), the float reference
outputs and the :class:`Scorer` (TPU-MLIR's similarity, optional post-process and compare-layer weights).
Strategies and evaluators read it and never change it; what changes during a search is the strategy's state
and the evaluators' prefix values, both passed explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..data.preprocess import PixelBatch
from ..devices import fetch
from ..engine import DEFAULT_CHUNK, CompileStats, Engine, ExecutableCache, pad_batch
from ..metrics import plain_cosine, similarity
from ..quant.mixed import QuantPlan, host_qparams, plan_from_table, thresholds_from_table


class Scorer:
    """Similarity of candidate outputs against the float reference (TPU-MLIR's 0.5+0.5cos, per sample).

    Cosines are computed by :mod:`qsens.metrics` on float32 outputs; the per-sample values are averaged
    in float64 (``loss = 1 - mean``)."""

    def __init__(self, ref: Mapping[str, np.ndarray], weights: Sequence[float] | None = None,
                 post_process: Callable | None = None):
        self.post = post_process
        self.weights = weights
        self.ref = self._post(ref)

    def _post(self, outs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        outs = {k: np.asarray(v, np.float32) for k, v in outs.items()}
        if self.post is None:
            return outs
        n = next(iter(outs.values())).shape[0]
        per = [self.post({k: v[j : j + 1] for k, v in outs.items()}) for j in range(n)]
        return {k: np.concatenate([np.asarray(p[k], np.float32).reshape(1, -1) for p in per]) for k in per[0]}

    def per_sample(self, outs: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(similarity(self.ref, self._post(outs), self.weights), np.float64)

    def loss(self, outs: Mapping[str, Any]) -> float:
        return float(1.0 - np.mean(self.per_sample(outs)))

    def cosine(self, outs: Mapping[str, Any]) -> float:
        return float(np.mean(np.asarray(plain_cosine(self.ref, self._post(outs), self.weights), np.float64)))


def concat_chunks(parts: Sequence[Mapping[str, np.ndarray]], counts: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-chunk output dicts -> one dict over all images (each chunk's padding sliced off)."""
    return {k: np.concatenate([np.asarray(p[k])[:c] for p, c in zip(parts, counts)]) for k in parts[0]}


#: bound of :meth:`Problem.qparams`'s memo (host INT8 parameters, mostly INT8 weights held as int32)
QP_CACHE_BYTES = 128 << 20


def _nbytes(qp: Mapping[str, Any]) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in qp.values())


class Problem:
    """Model + quant plan + inference images + scorer + base thresholds (read-only during a search).

    Build with :meth:`from_table`.  ``engine`` runs the graph at ``chunk`` images; :meth:`engine_at` gives
    engines at other batch sizes sharing the same :class:`~qsens.engine.ExecutableCache`.  The float
    reference outputs are computed once, at construction.
    """

    def __init__(self, model, plan: QuantPlan, th0: np.ndarray, inputs: Mapping[str, np.ndarray], *,
                 compare: Sequence[str] | None = None, compare_weights: Sequence[float] | None = None,
                 post_process: Callable | None = None, stats: CompileStats | None = None,
                 chunk: int = DEFAULT_CHUNK, cache: ExecutableCache | None = None, placement=None):
        from .. import devices

        self.model, self.plan = model, plan
        self.th0 = np.asarray(th0, np.float32)
        self.n = int(next(iter(inputs.values())).shape[0])
        #: the devices the images are split over (``--devices``); each runs ``chunk / placement.n`` images
        self.placement = placement if placement is not None else devices.default()
        self.chunk = max(1, min(chunk, self.n)) * self.placement.n
        self.stats = stats or CompileStats()
        self.engine = Engine(model, self.chunk, stats=self.stats, cache=cache, placement=self.placement,
                             float_type=plan.float_type)
        self.cache = self.engine.cache
        self.graph = self.engine.graph
        chunks, counts = [], []
        for s0 in range(0, self.n, self.chunk):
            # rows s0.. of each input; a PixelBatch slices to a PixelBatch (8-bit pixels, normalized when put on the device)
            part, k = pad_batch({n_: (v if isinstance(v, PixelBatch) else np.asarray(v))[s0 : s0 + self.chunk]
                                 for n_, v in inputs.items()}, self.chunk)
            chunks.append(part)
            counts.append(k)
        self.chunks: tuple[dict[str, np.ndarray], ...] = tuple(chunks)
        self.counts: tuple[int, ...] = tuple(counts)
        self.compare = tuple(compare) if compare else None
        self._engines: dict[int, Engine] = {self.chunk: self.engine}
        self._qp: dict = {}  # insertion-ordered: least recently used first
        self._qp_bytes = 0
        self._hw: dict = {}
        t0 = time.perf_counter()
        outs = []
        for part in self.chunks:
            env = self.engine.run(self.engine.input_env(part), keep=self.compare or (), blocks=True)
            outs.append(self.outputs(self.engine, env))
        self.ref_outputs = concat_chunks(outs, self.counts)
        self.float_s = time.perf_counter() - t0
        self.scorer = Scorer(self.ref_outputs, compare_weights, post_process)

    @classmethod
    def from_table(cls, model, table, inputs: Mapping[str, np.ndarray], chip=None, **kw) -> Problem:
        """The problem of a calibration table (:class:`qsens.tables.CaliTable`): plan and base thresholds;
        ``chip``: a :class:`qsens.quant.ChipSpec` or its name (default BM1684)."""
        from ..quant.chip import as_chip

        g = model.graph
        return cls(model, plan_from_table(g, table, as_chip(chip)), thresholds_from_table(g, table), inputs, **kw)

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def ops(self):
        return self.graph.ops

    @property
    def keep(self) -> set[str]:
        return set(self.compare or ())

    def engine_at(self, batch: int) -> Engine:
        """An engine at another batch size (e.g. candidates stacked along the batch), same executables cache."""
        e = self._engines.get(batch)
        if e is None:
            e = self._engines[batch] = Engine(self.model, batch, stats=self.stats, cache=self.cache,
                                              placement=self.placement, float_type=self.plan.float_type)
        return e

    def outputs(self, engine: Engine, env) -> dict[str, np.ndarray]:
        """The scored tensors of an environment: the graph outputs, or the compare layers (NCHW, host)."""
        if self.compare:
            return {t: fetch(engine.to_nchw(t, env[t])) for t in self.compare}
        return {k: fetch(v) for k, v in engine.outputs(env).items()}

    def qparams(self, op, tin: tuple, th_out: float) -> dict:
        """Host-side INT8 parameters of ``op`` for these input/output thresholds (memoized, least recently used
        out first beyond :data:`QP_CACHE_BYTES`: a Conv's INT8 weights depend on its thresholds, and a search
        over the ResNet-50-shaped bignet asks for ~100 MB of them per threshold set; a search reads one op's
        few sets for a while, then moves on, so the bound costs nothing but a recomputation of the same values)."""
        key = (op.name, tin, th_out)
        qp = self._qp.pop(key, None)
        if qp is None:
            qp = host_qparams(self.plan, op, self.host_weights(op), list(tin), th_out)
            if "w8" in qp and op.type == "Conv":
                # a Conv's int8 weights as float32 (the same integers: its kernel contracts them in float32, or
                # casts them back to int32 for the int32 path); left int32, XLA-CPU converts them inside the
                # depthwise loop, per tap and element (Lite0's 3x3 depthwise at 56x56x144, NHWC: 101 vs 29 ms)
                qp = {**qp, "w8": np.asarray(qp["w8"], np.float32)}
            self._qp_bytes += _nbytes(qp)
        self._qp[key] = qp  # most recently used last
        while (self._qp_bytes > QP_CACHE_BYTES or len(self._qp) > 4096) and len(self._qp) > 1:
            self._qp_bytes -= _nbytes(self._qp.pop(next(iter(self._qp))))
        return qp

    def forget_qparams(self, op_name: str) -> None:
        """Drop the memoized parameters of one op (its weights changed, e.g. bias correction)."""
        for k in [k for k in self._qp if k[0] == op_name]:
            self._qp_bytes -= _nbytes(self._qp.pop(k))

    def host_weights(self, op) -> dict[str, np.ndarray]:
        if op.name not in self._hw:
            self._hw[op.name] = {r: np.asarray(self.engine.params[k]) for r, k in op.weights}
        return self._hw[op.name]

    def with_output(self, th_table: np.ndarray, tensor: str, value: float) -> np.ndarray:
        """A copy of a threshold vector with ``tensor``'s threshold set to ``value`` (float32)."""
        th = np.array(th_table, np.float32)
        th[self.plan.tensor_index[tensor]] = value
        return th
