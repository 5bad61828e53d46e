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

from ..engine import CompileStats, Engine, op_signature
from ..metrics import plain_cosine, similarity
from ..onnx.convert import op_runs_nhwc
from ..onnx.layout import TO_NCHW, TO_NHWC
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
            y = int8_core(plan, _op, weights, xs, [th_in[k] for k in range(len(xs))], th_out, qp=qp)[0]
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


class SearchRunner:
    """Evaluates candidates; shared by the fast and naive strategies and by the summary evaluations."""

    def __init__(self, model, plan: QuantPlan, inputs: Mapping[str, np.ndarray], *, compare: Sequence[str] | None = None,
                 compare_weights: Sequence[float] | None = None, post_process: Callable | None = None,
                 n_methods: int = 3, stats: CompileStats | None = None):
        self.model, self.plan = model, plan
        self.n = int(next(iter(inputs.values())).shape[0])
        self.stats = stats or CompileStats()
        self.engine = Engine(model, self.n, stats=self.stats)
        self.g = self.engine.graph
        self.inputs = inputs
        self.K = n_methods
        self.compare = tuple(compare) if compare else None
        self.index = {op.name: i for i, op in enumerate(self.g.ops)}
        t0 = time.perf_counter()
        env = self.engine.run(self.engine.input_env(inputs), keep=self.compare or ())
        self.ref_outputs = self._outputs(self.engine, env)
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
        th_in = jnp.asarray([th_eff[idx[t]] for t in op.inputs] or [0.0], jnp.float32)
        acts = [env[t] for t in op.inputs] if op.type != "Input" else [env[op.outputs[0]]]
        w = engine.weights(op)
        tin = [float(v) for v in np.asarray(th_in)[: len(op.inputs)]]
        out = []
        for c in th_outs:
            qp = host_qparams(self.plan, op, self._host_weights(op), tin, float(c))
            out.append(engine.call(fn, w, acts, th_in, jnp.asarray(c, jnp.float32), qp))
        return out

    def _host_weights(self, op) -> dict[str, np.ndarray]:
        hw = self.__dict__.setdefault("_hw", {})
        if op.name not in hw:
            hw[op.name] = {r: np.asarray(self.engine.params[k]) for r, k in op.weights}
        return hw[op.name]

    # ----------------------------------------------------------------------------------------- mixed runs
    def run_mixed(self, th_table: np.ndarray, int8_ops: set[str]) -> dict[str, np.ndarray]:
        """The mixed model (ops in ``int8_ops`` INT8 with ``th_table``) on all inference images, op by op."""
        e = self.engine
        th_eff = self.plan.effective(np.asarray(th_table, np.float32))
        env = e.input_env(self.inputs)
        last = self.g.last_use
        keep = set(self.compare or ())
        for i, op in enumerate(self.g.ops):
            if op.type == "Input":
                if op.name in int8_ops:
                    t = op.outputs[0]
                    env[t] = self._int8(e, i, env, th_eff, [th_eff[self.plan.tensor_index[t]]])[0]
                continue
            if op.name in int8_ops and op.name not in self.plan.f32_reason:
                y = self._int8(e, i, env, th_eff, [th_eff[self.plan.tensor_index[op.outputs[0]]]])[0]
                outs = [y]
            else:
                outs = e.call(e.float_exe(i), e.weights(op), [env[t] for t in op.inputs])
            for t, v in zip(op.outputs, outs):
                env[t] = v
            for t in set(op.inputs):
                if last.get(t, -1) <= i and t not in keep:
                    env.pop(t, None)
        return self._outputs(e, env)

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
        self._env = self.engine.input_env(self.inputs)
        self._suffix_engines: dict[int, Engine] = {}

    def fast_advance(self, i: int):
        self._env = self.engine.run(self._env, i, i + 1, keep=self.compare or ())

    def candidates_fast(self, i: int, th_table: np.ndarray, cands: Sequence[float], method_batch: str = "loop") -> list[float]:
        """Losses of op ``i`` in INT8 (all else float) for each output threshold in ``cands`` (distinct)."""
        g, e = self.g, self.engine
        op = g.ops[i]
        if op.name in self.plan.f32_reason and op.type != "Input":
            return [self.scorer.loss(self.ref_outputs)] * len(cands)
        idx = self.plan.tensor_index
        th_eff = self.plan.effective(np.asarray(th_table, np.float32))
        eff_c = []
        for c in cands:  # each candidate's *effective* output threshold (copy map applied)
            th = np.array(th_table, np.float32)
            th[idx[op.outputs[0]]] = c
            eff_c.append(float(self.plan.effective(th)[idx[op.outputs[0]]]))
        ys = self._int8(e, i, self._env, th_eff, eff_c)  # (M, n, ...)
        last = g.last_use
        keep = set(self.compare or ())
        live = {t: v for t, v in self._env.items() if (last.get(t, -1) > i or t in keep) and t not in op.outputs}
        out_t = op.outputs[0]
        M = len(cands)
        if method_batch == "concat" and M > 1:
            eng = self._suffix_engines.get(M)
            if eng is None:
                eng = self._suffix_engines[M] = Engine(self.model, self.n * M, stats=self.stats)
            env = {t: jnp.concatenate([v] * M, axis=0) for t, v in live.items()}
            env[out_t] = jnp.concatenate(ys, axis=0)
            env = eng.run(env, i + 1, keep=keep)
            outs = self._outputs(eng, env)
            return [self.scorer.loss({k: v[m * self.n : (m + 1) * self.n] for k, v in outs.items()}) for m in range(M)]
        losses = []
        for m in range(M):
            env = dict(live)
            env[out_t] = ys[m]
            env = e.run(env, i + 1, keep=keep)
            losses.append(self.scorer.loss(self._outputs(e, env)))
        return losses


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
