"""TPU-MLIR's greedy mix-precision search (``run_qtable.py`` -> ``MixPrecSearcher.run``, spec §5), faithful.

The walk goes through the ops in graph order with two caches per inference image: the float model's
activations and the INT8 activations *with accumulated error* (each op's INT8 output computed from the cached
INT8 outputs of its inputs).  For every op that has an INT8 consumer (TPU-MLIR: "have_int8_next"), its layer
cos ``mean_samples cos_sim(dequant(int8), float)`` is recorded; when it is below ``min_layer_cos`` the op and
its consumers are set to float and the mixed model is run *from that op* (``invoke_from``) on the cached
inputs (float-model values for inputs already float, INT8 values otherwise).  Then, in TPU-MLIR's order:
success when ``outputs_cos > expected_cos``; failure when more than a quarter of the ops are float;
revert when ``outputs_cos < all_int8_cos``.  The consumers' INT8 caches become the re-quantizing Cast
outputs of the mixed model.

Behaviour of TPU-MLIR 1.23 reproduced on purpose (each checked with its run_qtable, fixtures in
``tests/fixtures/tpu_mlir/*/run_qtable*``):

- the reported ``mix model outputs_cos`` is the last step's, even when that step was reverted, failed, or
  there was none (0.0); qsens reports the similarity of the final qtable's model beside it
  (``true_mix_similarity``);
- a step runs the model from the op on: network outputs produced earlier are not recomputed and score
  against zeros (``cos_sim`` 0.5 for that output);
- a consumer set to float whose own consumers are all float (or follow its type, like Reshape) gets no Cast:
  its INT8 cache is empty, and the next op that needs it ends the search ("An exception happened: ...");
- ops are skipped only when they are the Input, already float, or have no INT8 consumer (every other type,
  MaxPool and Permute included, is evaluated: TPU-MLIR's skip list compares ``top.*`` names against the
  ``tpu.*`` ops it iterates).
Not reproduced: duplicate qtable lines (a consumer set float by two steps is written once).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..quant.kernels import dequantize, quantize
from ..quant.mixed import FOLLOWS_INPUT_TYPE
from .evaluators import Config, FloatPrefix, advance_mixed, mixed_similarity
from .problem import Problem, concat_chunks


class QtableAbort(Exception):
    """What TPU-MLIR's loop catches and logs as ``An exception happened: <message>`` (the search ends)."""


@jax.jit
def _cast_signed(x, th):
    """Float -> INT8 -> float at threshold ``th`` (BM1684 Cast: round half away from zero, saturate)."""
    return dequantize(quantize(x, th, True), th, True)


@jax.jit
def _cast_unsigned(x, th):
    return dequantize(quantize(x, th, False), th, False)


class MixCarry(NamedTuple):
    next: int
    int8: tuple  # per chunk: {tensor: device array or None (no Cast produced it)}, live tensors only
    ref: FloatPrefix  # the float model's prefix (its carry)


def _per_sample_cos(problem: Problem, a_chunks, b_chunks) -> np.ndarray:
    """TPU-MLIR ``cos_sim`` per image (0.5 + 0.5 cos of the flattened tensors), padding removed."""
    from ..devices import fetch
    from ..metrics import cos_sim

    vals = [np.asarray(cos_sim(fetch(a).astype(np.float32, copy=False), fetch(b).astype(np.float32, copy=False),
                               batch_axis=0), np.float64)[:c]
            for a, b, c in zip(a_chunks, b_chunks, problem.counts)]
    return np.concatenate(vals)


class Int8Prefix:
    """run_qtable's evaluator: the INT8 prefix with accumulated error beside the float prefix."""

    name = "int8_prefix"

    def __init__(self):
        self.float_prefix = FloatPrefix(all_resident=True)

    def init(self, problem: Problem, start: int = 0, int8: tuple | None = None) -> MixCarry:
        ref = self.float_prefix.init(problem, start)
        if int8 is None:
            assert start == 0
            int8 = tuple(dict(env) for env in ref.envs)  # the network inputs (each consumer casts them)
        return MixCarry(start, int8, ref)

    # --------------------------------------------------------------------------------------- one op
    def int8_output(self, problem: Problem, carry: MixCarry, i: int, th_eff: np.ndarray) -> MixCarry:
        """Op ``i``'s INT8 output from the cached INT8 inputs (TPU-MLIR ``gen_ref_tensor``, INT8 model)."""
        op = problem.ops[i]
        all_int8 = {o.name for o in problem.ops}
        new = []
        for env in carry.int8:
            for t in op.inputs:
                if t not in env:
                    raise QtableAbort(f"'{problem.graph.producer(t).name}'")
                if env[t] is None:
                    raise QtableAbort(f"{op.name} 's input:{problem.graph.producer(t).name} not exist")
            env = dict(env)  # the op's output only: nothing is dropped here (drop_dead does that)
            advance_mixed(problem, env, th_eff, all_int8, start=i, keep=set(env), stop=i + 1)
            new.append(env)
        return carry._replace(int8=tuple(new))

    def advance_float(self, problem: Problem, carry: MixCarry) -> MixCarry:
        """The float model through op ``next`` (its inputs kept until :meth:`drop_dead`: a step feeds them)."""
        i = carry.ref.next
        keep = set(problem.ops[i].inputs) | problem.keep
        envs = tuple(problem.engine.run(env, i, i + 1, keep=keep) for env in carry.ref.envs)
        return carry._replace(ref=carry.ref._replace(next=i + 1, envs=envs))

    def layer_cos(self, problem: Problem, carry: MixCarry, tensor: str) -> float:
        per = _per_sample_cos(problem, [env[tensor] for env in carry.int8], [env[tensor] for env in carry.ref.envs])
        return float(np.mean(per))

    def drop_dead(self, problem: Problem, carry: MixCarry, i: int) -> MixCarry:
        """Forget cached INT8 tensors no op after ``i`` reads (the float prefix drops its own)."""
        g = problem.graph
        last = g.last_use
        keep = problem.keep
        pos = {op.name: k for k, op in enumerate(g.ops)}
        # entries made by a step for ops after i (its consumers' Cast outputs) stay until those ops are met
        def live(t):
            return last.get(t, -1) > i or t in keep or pos[g.producer(t).name] > i

        int8 = tuple({t: v for t, v in env.items() if live(t)} for env in carry.int8)
        ref = tuple({t: v for t, v in env.items() if live(t)} for env in carry.ref.envs)
        return carry._replace(next=i + 1, int8=int8, ref=carry.ref._replace(envs=ref))

    # --------------------------------------------------------------------------------------- a step
    def run_from(self, problem: Problem, carry: MixCarry, i: int, fp_ops: set[str], th_eff: np.ndarray,
                 keep: set[str]) -> tuple[dict, list[dict]]:
        """The mixed model (``fp_ops`` float) from op ``i`` on the cached tensors (``invoke_from``).

        Fed: op ``i``'s inputs and every tensor made before ``i`` and read after it, from the float model if
        its producer is float, else from the INT8 cache.  Network outputs made before ``i`` are zeros.
        Returns the outputs over all images and, per chunk, the tensors in ``keep``."""
        g, e = problem.graph, problem.engine
        pos = {op.name: k for k, op in enumerate(g.ops)}
        feed = set(g.ops[i].inputs)
        for later in g.ops[i + 1 :]:
            feed |= {t for t in later.inputs if pos[g.producer(t).name] < i}
        int8_ops = {op.name for op in g.ops} - fp_ops
        outs, kept = [], []
        for ienv, fenv in zip(carry.int8, carry.ref.envs):
            env = {}
            for t in feed:
                src = fenv if g.producer(t).name in fp_ops else ienv
                if src.get(t) is None:
                    raise QtableAbort(f"{g.ops[i].name} 's input:{g.producer(t).name} not exist")
                env[t] = src[t]
            advance_mixed(problem, env, th_eff, int8_ops, start=i, keep=keep)
            # outputs made before op i were never computed in TPU-MLIR's fresh mixed module: zeros
            for t in (problem.compare or g.outputs):
                if t not in env:
                    env[t] = jnp.zeros(e.graph.tensor_shape(t) if not e.plan.get(t) else
                                       _nhwc(e.graph.tensor_shape(t)), jnp.float32)
            outs.append(problem.outputs(e, env))
            kept.append({t: env[t] for t in keep if t in env})
        return concat_chunks(outs, problem.counts), kept


def _nhwc(shape):
    return (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else shape


def int8_type_of(problem: Problem, op, float_ops: set[str]) -> str:
    """'F32' or 'INT8': the storage type of ``op``'s output when the ops in ``float_ops`` are float."""
    if op.type == "Input" or op.name in float_ops or op.name in problem.plan.f32_reason:
        return "F32"
    if op.type in FOLLOWS_INPUT_TYPE and op.inputs:
        return int8_type_of(problem, problem.graph.producer(op.inputs[0]), float_ops)
    return "INT8"


def int8_successors(problem: Problem, op) -> list[str | None]:
    """``op``'s successors in the pure INT8 model: a consumer of the same storage type by name, a Cast (None)
    where the type changes, and a Cast for an INT8 network output."""
    g = problem.graph
    mine = int8_type_of(problem, op, set())
    succ: list[str | None] = []
    for t in op.outputs:
        for c in g.consumers(t):
            succ.append(c.name if int8_type_of(problem, c, set()) == mine else None)
        if t in g.outputs and mine == "INT8":
            succ.append(None)
    return succ


class MixPrecision:
    """The strategy: one op per update; JSON state (the checkpoint): ``next``, the float list, the layer cos
    list in evaluation order, the steps, the last step's outputs cos, how it ended."""

    name = "mix_precision"

    def __init__(self, expected_cos: float = 0.99, min_layer_cos: float = 0.99):
        self.expected_cos = float(expected_cos)
        self.min_layer_cos = float(min_layer_cos)

    def init(self, problem: Problem, all_int8_cos: float) -> dict:
        return {"next": 0, "fp_list": [], "layer_cos": [], "steps": [], "outputs_cos": 0.0,
                "all_int8_cos": float(all_int8_cos), "end": None, "exception": None,
                "max_fp_layers": len(problem.ops) // 4}

    def done(self, problem: Problem, state: dict) -> bool:
        return state["end"] is not None

    def update(self, problem: Problem, state: dict, ev: Int8Prefix, carry: MixCarry) -> tuple[dict, MixCarry, list[str]]:
        i = state["next"]
        g = problem.graph
        op = g.ops[i]
        state = {**state, "fp_list": list(state["fp_list"]), "layer_cos": list(state["layer_cos"]),
                 "steps": list(state["steps"])}
        fp = state["fp_list"]
        th_eff = problem.plan.effective(problem.th0)
        events: list[str] = []
        try:
            have_next = op.type != "Input" and any(s is None or s not in fp for s in int8_successors(problem, op))
            if have_next and op.outputs[0] not in carry.int8[0]:
                carry = ev.int8_output(problem, carry, i, th_eff)
            carry = ev.advance_float(problem, carry)
            if op.type == "Input":  # TPU-MLIR's SKIP types; a skipped op follows a float predecessor
                if any(g.producer(t).name in fp for t in op.inputs):
                    fp.append(op.name)
            elif op.name not in fp and have_next:
                cos = ev.layer_cos(problem, carry, op.outputs[0])
                state["layer_cos"].append([op.name, cos])
                if cos < self.min_layer_cos:
                    state, carry, events = self._step(problem, state, ev, carry, i, cos, th_eff)
        except QtableAbort as ex:
            state["exception"] = str(ex)
            state["end"] = "exception"
            events.append(f"An exception happened: {ex}")
        carry = ev.drop_dead(problem, carry, i)
        state["next"] = i + 1
        if state["end"] is None and state["next"] >= len(g.ops):
            state["end"] = "exhausted"
        return state, carry, events

    def _step(self, problem: Problem, state: dict, ev: Int8Prefix, carry: MixCarry, i: int, cos: float, th_eff):
        g = problem.graph
        op = g.ops[i]
        fp = state["fp_list"]
        nexts = []
        for t in op.outputs:
            for c in g.consumers(t):
                if c.name not in nexts:
                    nexts.append(c.name)
        fp.append(op.name)
        fp.extend(nexts)
        fp_set = set(fp)
        keep = {op.outputs[0]} | {g.op(n).outputs[0] for n in nexts}
        outs, kept = ev.run_from(problem, carry, i, fp_set, th_eff, keep)
        outputs_cos = float(np.mean(problem.scorer.per_sample(outs)))
        # TPU-MLIR labels the op with the first image's cos of its float output (not a mean)
        first = float(_per_sample_cos(problem, [k[op.outputs[0]] for k in kept],
                                      [env[op.outputs[0]] for env in carry.ref.envs])[0])
        int8 = [dict(env) for env in carry.int8]
        for n in nexts:
            t = g.op(n).outputs[0]
            has_cast = any(int8_type_of(problem, c, fp_set) == "INT8" for c in g.consumers(t))
            s = problem.plan.signed[t]
            cast = _cast_signed if s else _cast_unsigned
            th_t = jnp.float32(th_eff[problem.plan.tensor_index[t]])
            for c, env in enumerate(int8):
                env[t] = cast(kept[c][t], th_t) if has_cast and t in kept[c] else None
        carry = carry._replace(int8=tuple(int8))
        step = {"op": op.name, "next_ops": nexts, "layer_cos": cos, "first_float_layer_cos": first,
                "outputs_cos": outputs_cos, "reverted": False, "result": None}
        state["outputs_cos"] = outputs_cos
        if outputs_cos > self.expected_cos:
            step["result"] = "success"
            state["end"] = "success"
        elif len(fp) > state["max_fp_layers"]:
            step["result"] = "fail"
            state["end"] = "fail"
        elif outputs_cos < state["all_int8_cos"]:
            step["reverted"] = True
            fp.remove(op.name)
            for n in nexts:
                fp.remove(n)
            carry = carry._replace(int8=tuple({k: v for k, v in env.items()
                                               if k not in {g.op(n).outputs[0] for n in nexts}} for env in carry.int8))
        state["steps"].append(step)
        return state, carry, []


def run_mix_precision(problem: Problem, strategy: MixPrecision) -> dict:
    """The whole search without I/O (the job adds checkpoints, logs and files around the same loop)."""
    ev = Int8Prefix()
    state = strategy.init(problem, all_int8_similarity(problem))
    carry = ev.init(problem)
    while not strategy.done(problem, state):
        state, carry, _ = strategy.update(problem, state, ev, carry)
    return state


def all_int8_similarity(problem: Problem) -> float:
    """TPU-MLIR's ``outputs_cos`` of the all-INT8 model (mean over images of the per-image similarity)."""
    return float(np.mean(problem.scorer.per_sample(_outputs_all_int8(problem))))


def _outputs_all_int8(problem: Problem):
    from .evaluators import run_mixed

    return run_mixed(problem, Config(frozenset(op.name for op in problem.ops), problem.th0))


def true_similarity(problem: Problem, fp_list) -> float:
    """The similarity of the model the qtable describes (``fp_list`` float, the table's thresholds)."""
    cfg = Config(frozenset(op.name for op in problem.ops) - set(fp_list), problem.th0)
    return mixed_similarity(problem, cfg)[0]
