"""Evaluators: the losses of mixed-precision configurations, with one interface.

A configuration (:class:`Config`) is a set of ops run in INT8 and a threshold vector (the calibration table
as an array over the graph's tensors, before the copy map).  Its loss is ``1 - similarity`` of the network
outputs against the float model over the problem's inference images (TPU-MLIR's ``outputs_cos``).

Every evaluator has ``init(problem, start) -> carry``, ``advance(problem, carry) -> carry`` and
``losses(problem, configs, carry) -> list[float]``.  The carry is a plain value (:class:`Prefix`) passed in
and returned: which op is next and, for the prefix evaluators, the activations computed so far.

- :class:`WholeGraph`: runs the mixed model from the network input for each configuration (any
  configuration; TPU-MLIR's own approach, without its recompiles).  Its carry only counts ops.
- :class:`FloatPrefix`: configurations whose only INT8 op is the next op ``L`` of the carry.  All ops before
  ``L`` are float, so ``L``'s inputs are the float activations the prefix already holds: only ``L`` (INT8, once
  per candidate) and the float suffix behind it run.  Same executables, same batches, so its losses equal
  :class:`WholeGraph`'s (tested).
- :class:`MixedPrefix`: configurations that agree with a *base* configuration on every op before the carry's
  next op ``L`` (precision, and the effective thresholds of the tensors those ops quantize): the base mixed
  model's prefix is advanced once, and each configuration runs from ``L`` on.  With an all-INT8 base this is the
  INT8-prefix evaluator of leave-one-out and the greedy searches; with an all-float base it scores units of
  several INT8 ops.  A configuration that does not agree on the prefix is run whole (counted in ``fallbacks``).
- :class:`~qsens.search.mixprec.Int8Prefix` (run_qtable's accumulated-error walk) lives with that strategy.

Devices are the evaluators' business: nothing above them knows where arrays live.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import Engine, op_signature, to_device
from ..exe_cache import PersistentJit
from ..onnx.convert import f32_tensor, op_runs_nhwc
from ..onnx.layout import TO_NCHW, TO_NHWC, per_op_executable
from ..quant.mixed import FOLLOWS_INPUT_TYPE, QuantPlan, int8_core
from ..quant.qparams import op_kind
from .problem import Problem, concat_chunks


class Config(NamedTuple):
    int8_ops: frozenset
    thresholds: np.ndarray  # float32 (n_tensors,), before the copy map


class Prefix(NamedTuple):
    next: int  # index of the next op
    # per chunk: live tensors after ops [0, next) (prefix evaluators), None where not cached (recomputed on demand)
    envs: list | None = None


# --------------------------------------------------------------------------------------------- INT8 ops
def int8_exe(engine: Engine, plan: QuantPlan, i: int):
    """Executable of op ``i``'s INT8 form (quantize, INT8 kernel, dequantize) in the engine's layout plan.

    ``f(weights, acts, th_in (n_inputs,), th_out (), qp) -> output``; ``qp`` are the INT8 parameters computed
    on the host (:func:`qsens.quant.mixed.host_qparams`), so the compiled code holds only the kernel.  The
    cache key holds everything the closure reads: the op's signature, signedness of its tensors, whether it
    is F32 in the INT8 model, and the static input shapes the parameters use."""
    op = engine.graph.ops[i]
    ins = op.inputs if op.type != "Input" else op.outputs  # the Input op quantizes its own tensor
    in_nhwc = tuple(bool(engine.plan.get(t)) for t in ins)
    out_nhwc = op_runs_nhwc(op, engine.plan) if op.type != "Input" else in_nhwc[0]
    sig = tuple(plan.signed[t] for t in op.inputs + op.outputs)
    shapes = tuple(tuple(plan.graph.tensor_shape(t)) for t in ins)
    # the float type of the inputs' producers picks each input's cast (F16 -> INT8 in F16 arithmetic)
    fts = tuple(not f32_tensor(plan.graph, t, plan.float_type) for t in op.inputs) if plan.float_type != "F32" else ()
    key = ("int8", plan.chip.name, op.name in plan.f32_reason, sig, shapes) + op_signature(op, engine.params, in_nhwc,
                                                                                            out_nhwc) + fts
    # a 2-D Conv held NHWC on both sides runs its INT8 kernel channel-last: the same codes without transposing
    # its input and output twice (measured on Lite0's INT8 model, 30 images: the stride-2 depthwise layers took
    # 7-14x their float time, e.g. 121 vs 17 ms, most of it transposing and casting their large inputs; now ~2x)
    direct = (op_kind(op) == "Conv" and op.name not in plan.f32_reason and in_nhwc == (True,) and out_nhwc
              and len(shapes[0]) == 4)

    def make():
        def f(weights, acts, th_in, th_out, qp, _op=op, _in=in_nhwc, _out=out_nhwc):
            if direct:
                # the padded-input depthwise form even when strided: the codes are made once, in the pad (the
                # per-tap products would each recompute the cast of their slice: 263 vs 121 ms on Lite0's
                # 112x112x96 3x3/2 layer, 30 images)
                return int8_core(plan, _op, weights, acts, [th_in[0]], th_out, qp=qp, fallback=False, nhwc=True)[0]
            xs = [jnp.transpose(a, TO_NCHW) if n else a for a, n in zip(acts, _in)]
            with per_op_executable():
                y = int8_core(plan, _op, weights, xs, [th_in[k] for k in range(len(xs))], th_out, qp=qp,
                              fallback=False)[0]
            return jnp.transpose(y, TO_NHWC) if _out else y

        return PersistentJit(key, f)

    return engine.cache.get(key, make)


def run_int8_op(problem: Problem, engine: Engine, i: int, env, th_eff: np.ndarray, th_outs: Sequence[float]) -> list:
    """Op ``i`` in INT8 on the activations of ``env`` (inputs cast with ``th_eff``), once per output threshold."""
    op = problem.graph.ops[i]
    fn = int8_exe(engine, problem.plan, i)
    idx = problem.plan.tensor_index
    th_in = to_device(np.asarray([th_eff[idx[t]] for t in op.inputs] or [0.0], np.float32))
    acts = [env[t] for t in op.inputs] if op.type != "Input" else [env[op.outputs[0]]]
    w = engine.weights(op)
    tin = tuple(float(v) for v in np.asarray(th_in)[: len(op.inputs)])
    out = []
    for c in th_outs:
        qp = problem.qparams(op, tin, float(c))
        if bool(np.asarray(qp.get("fallback", False))) and op.type != "Input":
            # BM1684 lowers this op to F32 for these thresholds (e.g. Conv rshift < 0): its float output
            out.append(engine.call(engine.float_exe(i), w, acts)[0])
        else:
            out.append(engine.call(fn, w, acts, th_in, to_device(np.float32(c)), qp))
    return out


def int8_tensor(problem: Problem, t: str, int8_ops) -> bool:
    """True when ``t`` holds a dequantized INT8 value in the configuration ``int8_ops``: its producer (seen through
    reshapes, which take their input's type) runs INT8."""
    g, plan = problem.graph, problem.plan
    p = g.producer(t) if t in g.tensors else None
    while p is not None and p.type in FOLLOWS_INPUT_TYPE and p.inputs:
        p = g.producer(p.inputs[0])
    return p is not None and p.type != "Input" and p.name in int8_ops and p.name not in plan.f32_reason


def advance_mixed(problem: Problem, env, th_eff: np.ndarray, int8_ops, start: int = 0, engine: Engine | None = None,
                  keep=(), stop: int | None = None, blocks: bool = True) -> dict:
    """Advance ``env`` in place through ops ``[start, stop)`` (default: to the end), ops in ``int8_ops`` INT8 (the
    others float); dead tensors are dropped unless in ``keep`` or the problem's compare layers.  Returns ``env``.
    ``blocks``: an :meth:`~qsens.engine.Engine.block_plan` block whose ops all run float here runs as one executable
    (the same values)."""
    e = engine or problem.engine
    g = problem.graph
    last = g.last_use
    keep = problem.keep | set(keep)
    f16 = problem.plan.float_type != "F32"
    stop = len(g.ops) if stop is None else stop
    f32_reason = problem.plan.f32_reason
    plan = e.block_plan() if blocks else {}
    done = start  # ops before this one have run (a block runs several)
    for i in range(start, stop):
        if i < done:
            continue
        op = g.ops[i]
        b = plan.get(i)
        if b is not None and b <= stop and all(o.name not in int8_ops or o.name in f32_reason for o in g.ops[i:b]):
            e.run_block(env, i, b, keep)
            done = b
            continue
        if op.type == "Input":  # never quantized by itself: each INT8 consumer casts it (TPU-MLIR lowering)
            continue
        if op.name in int8_ops and op.name not in f32_reason:
            outs = [run_int8_op(problem, e, i, env, th_eff, [th_eff[problem.plan.tensor_index[op.outputs[0]]]])[0]]
        else:
            # an F16 float op does not round what a dequantized INT8 producer wrote (int8_tensor)
            int8_in = frozenset(t for t in op.inputs if int8_tensor(problem, t, int8_ops)) if f16 else frozenset()
            outs = e.call(e.float_exe(i, int8_in), e.weights(op), [env[t] for t in op.inputs])
        outs = jax.block_until_ready(outs)
        for t, v in zip(op.outputs, outs):
            env[t] = v
        for t in set(op.inputs):
            if last.get(t, -1) <= i and t not in keep:
                env.pop(t, None)
    return env


def run_mixed_env(problem: Problem, env, th_eff: np.ndarray, int8_ops, start: int = 0, engine: Engine | None = None):
    """Advance ``env`` through ops ``[start, end)``, ops in ``int8_ops`` INT8; returns the scored outputs."""
    e = engine or problem.engine
    return problem.outputs(e, advance_mixed(problem, env, th_eff, int8_ops, start, e))


def run_mixed(problem: Problem, config: Config) -> dict[str, np.ndarray]:
    """The mixed model of ``config`` on all inference images, op by op."""
    th_eff = problem.plan.effective(np.asarray(config.thresholds, np.float32))
    outs = [run_mixed_env(problem, problem.engine.input_env(part), th_eff, config.int8_ops) for part in problem.chunks]
    return concat_chunks(outs, problem.counts)


def mixed_similarity(problem: Problem, config: Config) -> tuple[float, float, np.ndarray]:
    """(TPU-MLIR similarity, plain cosine, first output) of a configuration's mixed model."""
    outs = run_mixed(problem, config)
    return 1.0 - problem.scorer.loss(outs), problem.scorer.cosine(outs), outs[next(iter(outs))]


# --------------------------------------------------------------------------------------------- evaluators
def prefix_at(evaluator, problem: Problem, start: int) -> Prefix:
    """A prefix evaluator's carry at op ``start``: the network inputs advanced with ``evaluator.step``.

    Only the first :func:`~qsens.search.memory.resident_chunks` chunks are cached; the others are ``None`` in the
    carry and recomputed from their inputs by :func:`env_at` when an op needs them (the memory planner)."""
    from .memory import resident_chunks

    r = len(problem.chunks) if getattr(evaluator, "all_resident", False) else resident_chunks(problem)
    carry = Prefix(0, [problem.engine.input_env(part) if k < r else None for k, part in enumerate(problem.chunks)])
    while carry.next < start:
        carry = evaluator.advance(problem, carry)
    return carry


def advance_envs(envs: list, step) -> list:
    """``[step(env) for env in envs]`` (None stays None) that hands each chunk's old env back as soon as its new
    one is made: the entry in ``envs`` becomes None, so a carry being advanced holds one chunk twice at most,
    not the whole cache (measured: EfficientNet-Lite2's cache peaked at twice the planner's budget).  A carry
    whose entries were taken stays valid: :func:`env_at` recomputes a None chunk from its input."""
    if not isinstance(envs, list):  # a tuple (a carry rebuilt elsewhere) cannot be taken from: map it
        return [None if env is None else step(env) for env in envs]
    new = []
    for k in range(len(envs)):
        env = envs[k]
        if env is None:
            new.append(None)
            continue
        envs[k] = None
        new.append(step(env))
        del env  # the old live tensors go now, not at the next chunk's assignment
    return new


def env_at(evaluator, problem: Problem, carry: Prefix, k: int) -> dict:
    """Chunk ``k``'s live tensors after ops ``[0, carry.next)``: the cached ones, or recomputed from the input
    with the evaluator's own ``step`` (the same executables, so the same values)."""
    env = carry.envs[k]
    if env is not None:
        return env
    env = problem.engine.input_env(problem.chunks[k])
    for j in range(carry.next):
        env = evaluator.step(problem, env, j)
    return env


def envs_at(evaluator, problem: Problem, carry: Prefix):
    """Every chunk's live tensors after ``carry.next`` ops, one chunk at a time (recomputed ones are freed)."""
    for k in range(len(carry.envs)):
        yield env_at(evaluator, problem, carry, k)


class WholeGraph:
    """Every configuration from the network input (the baseline; any set of INT8 ops)."""

    name = "whole_graph"

    def init(self, problem: Problem, start: int = 0) -> Prefix:
        return Prefix(start)

    def advance(self, problem: Problem, carry: Prefix) -> Prefix:
        return Prefix(carry.next + 1)

    def losses(self, problem: Problem, configs: Sequence[Config], carry: Prefix | None = None) -> list[float]:
        return [problem.scorer.loss(run_mixed(problem, c)) for c in configs]


class FloatPrefix:
    """Configurations with one INT8 op, the carry's next op, on a float prefix advanced op by op.

    ``method_batch``: the candidates' float suffixes run one after the other on the prefix's executables
    (``"loop"``) or stacked along the batch (``"concat"``, an engine at ``chunk x len(configs)``)."""

    name = "float_prefix"

    def __init__(self, method_batch: str = "loop", all_resident: bool = False):
        if method_batch not in ("loop", "concat"):
            raise ValueError(f"method_batch must be loop or concat, got {method_batch!r}")
        self.method_batch = method_batch
        #: keep every chunk's prefix (the memory planner off: run_qtable's INT8 walk reads them all each op)
        self.all_resident = all_resident

    def init(self, problem: Problem, start: int = 0) -> Prefix:
        return prefix_at(self, problem, start)

    def step(self, problem: Problem, env: dict, i: int) -> dict:
        return problem.engine.run(env, i, i + 1, keep=problem.compare or ())

    def advance(self, problem: Problem, carry: Prefix) -> Prefix:
        i = carry.next
        return Prefix(i + 1, advance_envs(carry.envs, lambda env: self.step(problem, env, i)))

    def losses(self, problem: Problem, configs: Sequence[Config], carry: Prefix) -> list[float]:
        g, e, plan = problem.graph, problem.engine, problem.plan
        i = carry.next
        op = g.ops[i]
        for c in configs:
            if set(c.int8_ops) != {op.name}:
                raise ValueError(f"FloatPrefix evaluates configurations whose only INT8 op is {op.name}")
        if op.name in plan.f32_reason or op.type == "Input":
            # F32 inside the INT8 model, or the Input op: in TPU-MLIR's lowering an INT8 Input alone changes
            # nothing (the casts to INT8 belong to its INT8 consumers), so the model is the float one
            return [problem.scorer.loss(problem.ref_outputs)] * len(configs)
        idx = plan.tensor_index
        # each candidate's effective thresholds (copy map applied: the candidate can also set the threshold
        # of an input, e.g. a PRelu output that a single MaxPool consumes)
        effs = [plan.effective(np.asarray(c.thresholds, np.float32)) for c in configs]
        last = g.last_use
        keep = problem.keep
        out_t = op.outputs[0]
        M = len(configs)
        per_cand: list[list[dict]] = [[] for _ in range(M)]
        for env0 in envs_at(self, problem, carry):
            ys = [run_int8_op(problem, e, i, env0, eff, [float(eff[idx[out_t]])])[0] for eff in effs]
            live = {t: v for t, v in env0.items() if (last.get(t, -1) > i or t in keep) and t not in op.outputs}
            if self.method_batch == "concat" and M > 1:
                eng = problem.engine_at(problem.chunk * M)
                env = {t: jnp.concatenate([v] * M, axis=0) for t, v in live.items()}
                env[out_t] = jnp.concatenate(ys, axis=0)
                outs = problem.outputs(eng, eng.run(env, i + 1, keep=keep, int8_tensors=op.outputs))
                for m in range(M):
                    per_cand[m].append({k: v[m * problem.chunk : (m + 1) * problem.chunk] for k, v in outs.items()})
            else:
                for m in range(M):
                    env = dict(live)
                    env[out_t] = ys[m]
                    per_cand[m].append(problem.outputs(e, e.run(env, i + 1, keep=keep, int8_tensors=op.outputs,
                                                                 blocks=True)))
        return [problem.scorer.loss(concat_chunks(parts, problem.counts)) for parts in per_cand]


def prefix_compatible(problem: Problem, a: Config, a_eff: np.ndarray, b: Config, b_eff: np.ndarray, i: int) -> bool:
    """True when configurations ``a`` and ``b`` compute the same values for every tensor made by ops ``[0, i)``
    and cast those tensors identically: same precision for each op that can be INT8, and equal effective
    thresholds for every tensor made before ``i`` (an INT8 producer's value and every INT8 consumer's cast
    depend on them; a float producer's tensor is held to the same rule, which is only stricter)."""
    plan, g = problem.plan, problem.graph
    idx = plan.tensor_index
    for op in g.ops[:i]:
        if op.type == "Input" or op.name in plan.f32_reason:
            continue
        if (op.name in a.int8_ops) != (op.name in b.int8_ops):
            return False
    made = [idx[t] for op in g.ops[:i] for t in op.outputs]
    return bool(np.array_equal(a_eff[made], b_eff[made]))


class MixedPrefix:
    """Configurations that agree with ``base`` before the carry's next op, on the base's mixed prefix.

    The carry holds the base mixed model's live tensors after ops ``[0, next)`` (per chunk); a configuration
    runs from op ``next`` on (its own precision and thresholds) on a copy of them, with the executables the
    whole-graph run uses, so the losses equal :class:`WholeGraph`'s.  ``fallbacks`` counts configurations that
    did not agree with the base on the prefix (run whole); ``suffix_runs`` those run from ``next``."""

    name = "mixed_prefix"

    def __init__(self, problem: Problem, base: Config):
        self.base = Config(frozenset(base.int8_ops), np.asarray(base.thresholds, np.float32))
        self.base_eff = problem.plan.effective(self.base.thresholds)
        self.fallbacks = 0
        self.suffix_runs = 0

    def init(self, problem: Problem, start: int = 0) -> Prefix:
        return prefix_at(self, problem, start)

    def step(self, problem: Problem, env: dict, i: int) -> dict:
        return advance_mixed(problem, dict(env), self.base_eff, self.base.int8_ops, start=i, stop=i + 1)

    def advance(self, problem: Problem, carry: Prefix) -> Prefix:
        i = carry.next
        return Prefix(i + 1, advance_envs(carry.envs, lambda env: self.step(problem, env, i)))

    def rebase(self, problem: Problem, base: Config, carry: Prefix) -> bool:
        """Take ``base`` as the new base if it agrees with the old one before ``carry.next`` (the carry stays
        valid); returns False (nothing changed) otherwise."""
        base = Config(frozenset(base.int8_ops), np.asarray(base.thresholds, np.float32))
        eff = problem.plan.effective(base.thresholds)
        if not prefix_compatible(problem, self.base, self.base_eff, base, eff, carry.next):
            return False
        self.base, self.base_eff = base, eff
        return True

    def losses(self, problem: Problem, configs: Sequence[Config], carry: Prefix) -> list[float]:
        i = carry.next
        effs = [problem.plan.effective(np.asarray(c.thresholds, np.float32)) for c in configs]
        ok = [prefix_compatible(problem, self.base, self.base_eff, c, eff, i) for c, eff in zip(configs, effs)]
        parts: list[list] = [[] for _ in configs]
        if any(ok):
            for env in envs_at(self, problem, carry):  # chunk outer: a recomputed prefix serves every config
                for m, c in enumerate(configs):
                    if ok[m]:
                        parts[m].append(run_mixed_env(problem, dict(env), effs[m], c.int8_ops, start=i))
        out = []
        for m, c in enumerate(configs):
            if ok[m]:
                self.suffix_runs += 1
                out.append(problem.scorer.loss(concat_chunks(parts[m], problem.counts)))
            else:
                self.fallbacks += 1
                out.append(problem.scorer.loss(run_mixed(problem, c)))
        return out


EVALUATORS = {"fast": FloatPrefix, "naive": WholeGraph}
