"""The sensitive-layer search core: per-op candidate losses, fast and naive strategies.

For every op L of the canonical list and every calibration method m, TPU-MLIR's ``run_sensitive_layer``
makes L the only INT8 op, sets L's output threshold to method m's, casts L's inputs with the thresholds chosen
so far, and scores the network output: ``loss = 1 - similarity`` against the float model.

``fast`` strategy (the point of qsens): all other ops being float, L's inputs are the *float* activations,
which do not depend on any candidate.  So a float prefix is computed once and advanced op by op (only live
tensors kept); L's INT8 form is evaluated for all methods in one vmapped call; the float suffix behind L runs
once per op for all distinct candidate thresholds, stacked along the batch (``method_batch="concat"``) or one
after the other on the prefix's executables (``"loop"``).  Every op runs through the
:class:`qsens.engine.Engine`'s shared per-signature executables.

``naive`` strategy (the baseline, TPU-MLIR's approach without the recompiles): for every (op, method) the
mixed model with only L in INT8 runs over all inference images from the network input.  It uses the same
per-op executables at the same batch, so its INT8 input codes and losses are identical to ``fast``'s.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import DEFAULT_CHUNK, CompileStats, Engine, op_signature, pad_batch, to_device
from ..metrics import plain_cosine, similarity
from ..onnx.convert import op_runs_nhwc
from ..onnx.layout import TO_NCHW, TO_NHWC, per_op_executable
from ..quant.mixed import QuantPlan, host_qparams, int8_core
from .analysis import best_method


@dataclasses.dataclass
class Candidate:
    op: str
    method: str
    threshold: float
    loss: float
    same_as: str | None = None  # method whose (effective) threshold is identical: loss copied, not recomputed


@dataclasses.dataclass
class OpResult:
    op: str
    type: str
    candidates: list[Candidate]
    best_method: str
    best_threshold: float
    best_loss: float
    seconds: float


def int8_exe(engine: Engine, plan: QuantPlan, i: int):
    """Executable of op ``i``'s INT8 form (quantize, INT8 kernel, dequantize) in the engine's layout plan.

    ``f(weights, acts, th_in (n_inputs,), th_out (), qp) -> output``; ``qp`` are the INT8 parameters computed on
    the host (:func:`qsens.quant.mixed.host_qparams`), so the compiled code holds only the kernel.  Candidates of one op are evaluated by calling
    it once per output threshold: their int8 weights differ, so batching them buys nothing, and one variant per
    op signature keeps compilation small."""
    op = engine.graph.ops[i]
    ins = op.inputs if op.type != "Input" else op.outputs  # the Input op quantizes its own tensor
    in_nhwc = tuple(bool(engine.plan.get(t)) for t in ins)
    out_nhwc = op_runs_nhwc(op, engine.plan) if op.type != "Input" else in_nhwc[0]
    sig = tuple(plan.signed[t] for t in op.inputs + op.outputs)
    key = ("int8", op.name in plan.f32_reason, sig) + op_signature(op, engine.params, in_nhwc, out_nhwc)
    fn = Engine._shared.get(key)
    if fn is None:
        def f(weights, acts, th_in, th_out, qp, _op=op, _in=in_nhwc, _out=out_nhwc):
            xs = [jnp.transpose(a, TO_NCHW) if n else a for a, n in zip(acts, _in)]
            with per_op_executable():
                y = int8_core(plan, _op, weights, xs, [th_in[k] for k in range(len(xs))], th_out, qp=qp,
                              fallback=False)[0]
            return jnp.transpose(y, TO_NHWC) if _out else y

        fn = jax.jit(f)
        Engine._shared[key] = fn
    return fn


class Scorer:
    """Similarity of candidate outputs against the float reference (TPU-MLIR's 0.5+0.5cos, per sample)."""

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


def _cat(parts: Sequence[Mapping[str, np.ndarray]], counts: Sequence[int]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([np.asarray(p[k])[:c] for p, c in zip(parts, counts)]) for k in parts[0]}


class SearchRunner:
    """Evaluates candidates; shared by the fast and naive strategies and by the summary evaluations.

    The ``N`` inference images are processed in chunks of ``chunk`` images (the last one padded by repeating
    its last image, the padding sliced off): memory holds one chunk's activations beyond the float prefix,
    and calibration, prefix, suffixes and mixed runs share one set of executables at that batch size.
    """

    def __init__(self, model, plan: QuantPlan, inputs: Mapping[str, np.ndarray], *, compare: Sequence[str] | None = None,
                 compare_weights: Sequence[float] | None = None, post_process: Callable | None = None,
                 n_methods: int = 3, stats: CompileStats | None = None, chunk: int = DEFAULT_CHUNK):
        self.model, self.plan = model, plan
        self.n = int(next(iter(inputs.values())).shape[0])
        self.chunk = max(1, min(chunk, self.n))
        self.stats = stats or CompileStats()
        self.engine = Engine(model, self.chunk, stats=self.stats)
        self.g = self.engine.graph
        self.chunks: list[dict[str, np.ndarray]] = []
        self.counts: list[int] = []
        for s0 in range(0, self.n, self.chunk):
            part, k = pad_batch({n_: np.asarray(v)[s0 : s0 + self.chunk] for n_, v in inputs.items()}, self.chunk)
            self.chunks.append(part)
            self.counts.append(k)
        self.K = n_methods
        self.compare = tuple(compare) if compare else None
        t0 = time.perf_counter()
        outs = []
        for part in self.chunks:
            env = self.engine.run(self.engine.input_env(part), keep=self.compare or ())
            outs.append(self._outputs(self.engine, env))
        self.ref_outputs = _cat(outs, self.counts)
        self.float_s = time.perf_counter() - t0
        self.scorer = Scorer(self.ref_outputs, compare_weights, post_process)

    # ----------------------------------------------------------------------------------------- helpers
    def _outputs(self, engine: Engine, env) -> dict[str, np.ndarray]:
        if self.compare:
            return {t: np.asarray(engine.to_nchw(t, env[t])) for t in self.compare}
        return {k: np.asarray(v) for k, v in engine.outputs(env).items()}

    def _int8(self, engine: Engine, i: int, env, th_eff: np.ndarray, th_outs: Sequence[float]) -> list:
        op = self.g.ops[i]
        fn = int8_exe(engine, self.plan, i)
        idx = self.plan.tensor_index
        th_in = to_device(np.asarray([th_eff[idx[t]] for t in op.inputs] or [0.0], np.float32))
        acts = [env[t] for t in op.inputs] if op.type != "Input" else [env[op.outputs[0]]]
        w = engine.weights(op)
        tin = [float(v) for v in np.asarray(th_in)[: len(op.inputs)]]
        out = []
        for c in th_outs:
            qp = self._qparams(op, tuple(tin), float(c))
            if bool(np.asarray(qp.get("fallback", False))) and op.type != "Input":
                # BM1684 lowers this op to F32 for these thresholds (e.g. Conv rshift < 0): its float output
                out.append(engine.call(engine.float_exe(i), w, acts)[0])
            else:
                out.append(engine.call(fn, w, acts, th_in, to_device(np.float32(c)), qp))
        return out

    def _qparams(self, op, tin: tuple, th_out: float) -> dict:
        cache = self.__dict__.setdefault("_qp", {})
        key = (op.name, tin, th_out)
        if key not in cache:
            if len(cache) > 4096:
                cache.clear()
            cache[key] = host_qparams(self.plan, op, self._host_weights(op), list(tin), th_out)
        return cache[key]

    def _host_weights(self, op) -> dict[str, np.ndarray]:
        hw = self.__dict__.setdefault("_hw", {})
        if op.name not in hw:
            hw[op.name] = {r: np.asarray(self.engine.params[k]) for r, k in op.weights}
        return hw[op.name]

    # ----------------------------------------------------------------------------------------- mixed runs
    def _run_mixed_env(self, env, th_eff: np.ndarray, int8_ops: set[str], start: int = 0):
        e = self.engine
        last = self.g.last_use
        keep = set(self.compare or ())
        for i in range(start, len(self.g.ops)):
            op = self.g.ops[i]
            if op.type == "Input":  # never quantized by itself: each INT8 consumer casts it (TPU-MLIR lowering)
                continue
            if op.name in int8_ops and op.name not in self.plan.f32_reason:
                outs = [self._int8(e, i, env, th_eff, [th_eff[self.plan.tensor_index[op.outputs[0]]]])[0]]
            else:
                outs = e.call(e.float_exe(i), e.weights(op), [env[t] for t in op.inputs])
            outs = jax.block_until_ready(outs)
            for t, v in zip(op.outputs, outs):
                env[t] = v
            for t in set(op.inputs):
                if last.get(t, -1) <= i and t not in keep:
                    env.pop(t, None)
        return self._outputs(e, env)

    def run_mixed(self, th_table: np.ndarray, int8_ops: set[str]) -> dict[str, np.ndarray]:
        """The mixed model (ops in ``int8_ops`` INT8 with ``th_table``) on all inference images, op by op."""
        th_eff = self.plan.effective(np.asarray(th_table, np.float32))
        outs = [self._run_mixed_env(self.engine.input_env(part), th_eff, int8_ops) for part in self.chunks]
        return _cat(outs, self.counts)

    def mixed_similarity(self, th_table: np.ndarray, int8_ops: set[str]) -> tuple[float, float, np.ndarray]:
        outs = self.run_mixed(th_table, int8_ops)
        return 1.0 - self.scorer.loss(outs), self.scorer.cosine(outs), outs[next(iter(outs))]

    # ----------------------------------------------------------------------------------------- strategies
    def candidates_naive(self, i: int, th_table: np.ndarray, cands: Sequence[float]) -> list[float]:
        op = self.g.ops[i]
        t = op.outputs[0]
        losses = []
        for c in cands:
            th = np.array(th_table, np.float32)
            th[self.plan.tensor_index[t]] = c
            losses.append(self.scorer.loss(self.run_mixed(th, {op.name})))
        return losses

    def fast_begin(self):
        self._envs = [self.engine.input_env(part) for part in self.chunks]
        self._suffix_engines: dict[int, Engine] = {}

    def fast_advance(self, i: int):
        self._envs = [self.engine.run(env, i, i + 1, keep=self.compare or ()) for env in self._envs]

    def candidates_fast(self, i: int, th_table: np.ndarray, cands: Sequence[float], method_batch: str = "loop") -> list[float]:
        """Losses of op ``i`` in INT8 (all else float) for each output threshold in ``cands`` (distinct)."""
        g, e = self.g, self.engine
        op = g.ops[i]
        if op.name in self.plan.f32_reason or op.type == "Input":
            # F32 inside the INT8 model, or the Input op: in TPU-MLIR's lowering an INT8 Input alone changes
            # nothing (the casts to INT8 belong to its INT8 consumers), so the model is the float one
            return [self.scorer.loss(self.ref_outputs)] * len(cands)
        idx = self.plan.tensor_index
        effs = []  # each candidate's effective thresholds (copy map applied: the candidate can also set the
        for c in cands:  # threshold of an input, e.g. a PRelu output that a single MaxPool consumes)
            th = np.array(th_table, np.float32)
            th[idx[op.outputs[0]]] = c
            effs.append(self.plan.effective(th))
        last = g.last_use
        keep = set(self.compare or ())
        out_t = op.outputs[0]
        M = len(cands)
        per_cand: list[list[dict]] = [[] for _ in range(M)]
        for env0 in self._envs:
            ys = [self._int8(e, i, env0, eff, [float(eff[idx[op.outputs[0]]])])[0] for eff in effs]
            live = {t: v for t, v in env0.items() if (last.get(t, -1) > i or t in keep) and t not in op.outputs}
            if method_batch == "concat" and M > 1:
                eng = self._suffix_engines.get(M)
                if eng is None:
                    eng = self._suffix_engines[M] = Engine(self.model, self.chunk * M, stats=self.stats)
                env = {t: jnp.concatenate([v] * M, axis=0) for t, v in live.items()}
                env[out_t] = jnp.concatenate(ys, axis=0)
                outs = self._outputs(eng, eng.run(env, i + 1, keep=keep))
                for m in range(M):
                    per_cand[m].append({k: v[m * self.chunk : (m + 1) * self.chunk] for k, v in outs.items()})
            else:
                for m in range(M):
                    env = dict(live)
                    env[out_t] = ys[m]
                    per_cand[m].append(self._outputs(e, e.run(env, i + 1, keep=keep)))
        return [self.scorer.loss(_cat(parts, self.counts)) for parts in per_cand]


def distinct(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Distinct values in first-seen order and, for each input, the index of its distinct value."""
    uniq: list[float] = []
    where: list[int] = []
    for v in values:
        for k, u in enumerate(uniq):
            if u == v:
                where.append(k)
                break
        else:
            uniq.append(v)
            where.append(len(uniq) - 1)
    return uniq, where


def choose(op_name: str, op_type: str, methods: Sequence[str], ths: Sequence[float], losses: Sequence[float],
           same_as: Sequence[str | None], seconds: float) -> OpResult:
    k = best_method(losses)
    cands = [Candidate(op_name, m, float(t), float(l), s) for m, t, l, s in zip(methods, ths, losses, same_as)]
    return OpResult(op_name, op_type, cands, methods[k], float(ths[k]), float(losses[k]), seconds)
