"""Gradient screening of sensitive layers and continuous threshold refinement, on the exact BM1684 INT8 model.

Both tools run the whole graph as one jit-compiled function per chunk of images (thresholds, perturbations and
per-sample weights are traced arguments: changing them never recompiles) and reuse
:func:`qsens.quant.mixed.int8_path` / :func:`qsens.onnx.convert.run_graph` for the forward values, so the loss
they see is the exact loss of the INT8 model (:class:`qsens.quant.mixed.MixedModel` with an all-ones mask over
``int8_ops``).

* :func:`st_apply`: the straight-through (ST) INT8 model.  Every INT8 op's value is its BM1684 INT8 output
  (quantize with round half away from zero, integer kernel, dequantize), combined as ``st(y_float, y_int8)``:
  forward ``y_int8``, backward the identity into ``y_float`` = the float op on the same (ST) inputs, so
  gradients flow through the float ops of the network.
* :func:`grad_scores`: one forward + one backward per chunk; with ``g = dL/dy_op`` (a zero perturbation added
  to each INT8 op's output) and ``dy = y_int8 - y_float`` (the op's own quantization error in the all-INT8
  context): ``taylor = sum g*dy`` (first-order loss reduction when the op is made float) and
  ``fisher = sum (g*dy)^2``.  ``taylor_requant`` / ``fisher_requant`` use ``dy = y_int8 - Q(y_float)`` for ops
  whose output every reader casts to INT8 with the output's own threshold (:func:`requantized_ops`): made float,
  such an op's output is still quantized by its readers, so only that part of its error goes away (GAP before an
  INT8 Gemm: plain taylor large, exact leave-one-out gain ~0).
* :func:`refine_thresholds`: Adam on log-thresholds; the forward value stays exact and the threshold gradient
  comes from a fake-quant surrogate (LSQ-style) added as ``s - stop_gradient(s)``.

Pure functions (no file I/O).  Gradient screening has no post-process: the loss is the similarity of the raw
network outputs (or compare layers).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import SearchError
from ..metrics import similarity
from ..onnx.convert import run_graph
from ..onnx.ir import Op
from ..quant.kernels import F32, dequantize, quantize
from ..quant.mixed import FOLLOWS_INPUT_TYPE, QuantPlan, int8_path
from ..quant.numerics import Round, qmax_of, qrange, round_to_int
from .problem import Problem

__all__ = ["fake_quant", "grad_scores", "refine_thresholds", "requantized_ops", "scored_ops", "st", "st_apply",
           "st_loss"]

#: ``int8_fn(op, weights, acts_nchw, th_eff) -> [y]``: the forward value of an INT8 op (default: BM1684's,
#: :func:`qsens.quant.mixed.int8_path`).  A hook for tests (e.g. ``y_float + offset``, whose ST gradient is exact).
Int8Fn = Callable[[Op, Mapping[str, Any], Sequence[Any], Any], list]

_sg = jax.lax.stop_gradient


# ------------------------------------------------------------------------------------------ straight-through
@jax.custom_vjp
def st(y_float, y_int8):
    """Forward ``y_int8``; backward: the cotangent goes to ``y_float`` unchanged (identity), zero to ``y_int8``."""
    return y_int8


def _st_fwd(y_float, y_int8):
    return y_int8, None


def _st_bwd(_, ct):
    return ct, jnp.zeros_like(ct)


st.defvjp(_st_fwd, _st_bwd)


def scored_ops(plan: QuantPlan, int8_ops: Iterable[str] | None = None) -> list[str]:
    """The ops that run INT8 in the configuration, graph order: ``int8_ops`` (default all) less the Input op
    (never quantized by itself: its INT8 consumers cast it) and the ops BM1684 keeps F32 (``plan.f32_reason``)."""
    want = None if int8_ops is None else set(int8_ops)
    return [op.name for op in plan.graph.ops
            if op.type != "Input" and op.name not in plan.f32_reason and (want is None or op.name in want)]


def _bm1684_int8(plan: QuantPlan) -> Int8Fn:
    def fn(op, weights, acts, th_eff):
        return int8_path(plan, op, weights, acts, th_eff)

    return fn


def _run(model, plan: QuantPlan, params, inputs, thresholds, ops: Sequence[str], combine, taps: Sequence[str]):
    """The graph with ``combine(op, weights, acts_nchw, th_eff, float_outs_nchw) -> [y]`` for the ops in ``ops``
    (others float).  ``float_outs`` are the op's float outputs on the same inputs, from run_graph's fast layout
    path (channel-last convolutions; the NCHW generic path is several times slower on CPU, forward and backward)."""
    g, env = model.input_env(inputs)
    th_eff = plan.effective(jnp.asarray(thresholds, F32))
    sel = set(ops)

    def mix_fn(op, params_, acts, float_outs):
        if op.name not in sel:
            return None
        w = {r: params_[k] for r, k in op.weights}
        return combine(op, w, acts, th_eff, float_outs), True  # flag True: run_graph takes the combined value

    mix_fn.wants_float = True

    taps = tuple(taps)
    env = run_graph(g, params, env, mix_fn=mix_fn, keep=taps, float_type=plan.float_type)
    return {name: env[t] for name, t in zip(g.output_names, g.outputs)}, {t: env[t] for t in taps}


def requantized_ops(plan: QuantPlan, ops: Iterable[str], taps: Sequence[str] = ()) -> set[str]:
    """The ops of ``ops`` whose output every reader casts to INT8 with the output's own threshold and sign: all
    its consumers are in ``ops`` (through Reshape-like ops, which keep their input's type and range), and it is
    neither a graph output nor tapped.  Made float, such an op's output is still re-quantized by its readers."""
    g, idx = plan.graph, plan.tensor_index
    ops = set(ops)
    ends = set(g.outputs) | set(taps)
    copy_of = lambda t: (int(plan.copy_src[idx[t]]),  # noqa: E731
                         None if plan.min_src is None else int(plan.min_src[idx[t]]),
                         None if plan.copy_scale is None else float(plan.copy_scale[idx[t]]),
                         plan.signed[t], plan.fixed_th.get(t))

    def cast_by_all(t) -> bool:
        if t in ends or not g.consumers(t):
            return False
        for c in g.consumers(t):
            if c.type in FOLLOWS_INPUT_TYPE and len(c.outputs) == 1:  # transparent: same codes, same range
                if copy_of(c.outputs[0]) != copy_of(t) or not cast_by_all(c.outputs[0]):
                    return False
            elif c.name not in ops or c.name in plan.f32_reason:
                return False
        return True

    return {o for o in ops if len(g.op(o).outputs) == 1 and cast_by_all(g.op(o).outputs[0])}


def _st(model, plan: QuantPlan, params, inputs, thresholds, *, int8_ops, perturb, int8_fn, taps, requant=()):
    ops = scored_ops(plan, int8_ops)
    fn = int8_fn or _bm1684_int8(plan)
    perturb = perturb or {}
    requant = set(requant)
    idx = plan.tensor_index
    deltas: dict[str, Any] = {}
    deltas_rq: dict[str, Any] = {}

    def combine(op, w, acts, th_eff, float_outs):
        yq = fn(op, w, [_sg(a) for a in acts], _sg(th_eff))[0]
        yf = float_outs[0]  # the float op on the same inputs (run_graph's layout path)
        deltas[op.name] = yq - yf
        if op.name in requant:  # what the INT8 readers would see of the float output: its own cast (RHAZ)
            t = op.outputs[0]
            th_t, sg_t = _sg(th_eff[idx[t]]), plan.signed[t]
            deltas_rq[op.name] = yq - dequantize(quantize(_sg(yf), th_t, sg_t), th_t, sg_t)
        else:
            deltas_rq[op.name] = deltas[op.name]
        y = st(yf, yq)
        if op.name in perturb:
            y = y + perturb[op.name]
        return [y]

    outs, tapped = _run(model, plan, params, inputs, thresholds, ops, combine, taps)
    return outs, tapped, deltas, deltas_rq


def st_apply(model, plan: QuantPlan, params, inputs, thresholds, *, int8_ops: Iterable[str] | None = None,
             perturb: Mapping[str, Any] | None = None, int8_fn: Int8Fn | None = None, taps: Sequence[str] = ()):
    """The straight-through INT8 model (jit-able; ``thresholds`` before the copy map, traced).

    Returns ``(outputs, tapped, deltas)``: network outputs by name, ``{tensor: value}`` of ``taps``, and
    ``{op: y_int8 - y_float}`` of every scored op (:func:`scored_ops`).  Each scored op's output is
    ``st(y_float, y_int8) + perturb.get(op, 0)``, with ``y_float`` the float op on the same inputs as the INT8 op
    (the previous ops' ST outputs) and ``y_int8`` its BM1684 INT8 value on stopped-gradient inputs/thresholds.
    Forward values equal ``MixedModel.apply`` with the mask of ``int8_ops``."""
    return _st(model, plan, params, inputs, thresholds, int8_ops=int8_ops, perturb=perturb, int8_fn=int8_fn,
               taps=taps)[:3]


# ------------------------------------------------------------------------------------------ per-chunk data
def _check(problem: Problem) -> None:
    if problem.scorer.post is not None:
        raise SearchError("gradient screening does not support --post_process (the loss must be differentiable "
                          "in the network outputs); drop --post_process or use the exact search")


def _scored(compare, outs, tapped) -> dict:
    if compare:
        return {t: tapped[t] for t in compare}
    return dict(outs)


def _chunk_data(problem: Problem):
    """Per chunk: (inputs, per-sample weights 1/N or 0 for padding, reference outputs padded to ``chunk``)."""
    ref = problem.scorer.ref
    n = float(sum(problem.counts))
    out, s0 = [], 0
    for part, k in zip(problem.chunks, problem.counts):
        c = problem.chunk
        w = np.zeros(c, np.float32)
        w[:k] = 1.0 / n
        r = {}
        for name, v in ref.items():
            rows = np.asarray(v[s0 : s0 + k], np.float32)
            if k < c:
                rows = np.concatenate([rows, np.repeat(rows[-1:], c - k, 0)])
            r[name] = rows
        out.append(({n_: jax.device_put(np.asarray(v)) for n_, v in part.items()}, jax.device_put(w),
                    {n_: jax.device_put(v) for n_, v in r.items()}))
        s0 += k
    return out


def _loss_of(sims: Sequence[np.ndarray], counts: Sequence[int]) -> float:
    per = np.concatenate([np.asarray(s)[:k] for s, k in zip(sims, counts)]).astype(np.float64)
    return float(1.0 - np.mean(per))


#: jitted per-chunk functions per problem (dropped with the problem: the closures never hold the problem itself),
#: keyed by mode and static configuration
_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: traces per mode ("scores" / "refine"): tests count compiles with it
TRACES: dict[str, int] = {"scores": 0, "refine": 0}


def _cached(problem: Problem, key: tuple, make: Callable[[], Callable]) -> Callable:
    d = _FNS.setdefault(problem, {})
    if key not in d:
        d[key] = make()
    return d[key]


def _ops_key(plan: QuantPlan, int8_ops) -> tuple[str, ...]:
    return tuple(scored_ops(plan, int8_ops))


# ------------------------------------------------------------------------------------------ grad scores
def _scores_fn(problem: Problem, ops: tuple[str, ...], int8_fn: Int8Fn | None) -> Callable:
    """``f(params, inputs, th, w, ref, e) -> (sims (chunk,), taylor (n_ops,), fisher (n_ops,))``, jitted."""
    model, plan = problem.model, problem.plan
    taps = problem.compare or ()
    weights = problem.scorer.weights

    rq = requantized_ops(plan, ops, taps)

    def make():
        def chunk(params, inputs, th, w, ref, e):
            TRACES["scores"] += 1

            def loss(e_):
                outs, tapped, dy, dy_rq = _st(model, plan, params, inputs, th, int8_ops=ops, perturb=e_,
                                              int8_fn=int8_fn, taps=taps, requant=rq)
                sims = similarity(ref, _scored(taps, outs, tapped), weights, xp=jnp)
                return -jnp.sum(w * sims), (sims, dy, dy_rq)

            (_, (sims, dy, dy_rq)), ge = jax.value_and_grad(loss, has_aux=True)(e)

            def scores(d):
                return (jnp.stack([jnp.sum(ge[o] * d[o]) for o in ops]),
                        jnp.stack([jnp.sum(jnp.square(ge[o] * d[o])) for o in ops]))

            return (sims,) + scores(dy) + scores(dy_rq)

        return jax.jit(chunk)

    return _cached(problem, ("scores", ops, int8_fn), make)


def _zero_perturb(problem: Problem, ops: Sequence[str]) -> dict[str, jax.Array]:
    g = problem.graph  # at the chunk batch
    return {o: jnp.zeros(g.tensor_shape(g.op(o).outputs[0]), F32) for o in ops}


def _scores_pass(problem: Problem, thresholds, int8_ops, int8_fn, perturb):
    _check(problem)
    ops = _ops_key(problem.plan, int8_ops)
    fn = _scores_fn(problem, ops, int8_fn)
    th = jax.device_put(np.asarray(problem.th0 if thresholds is None else thresholds, np.float32))
    e = _zero_perturb(problem, ops)
    for o, v in (perturb or {}).items():
        e[o] = jnp.broadcast_to(jnp.asarray(v, F32), e[o].shape)
    sims, acc = [], np.zeros((4, len(ops)))
    for inputs, w, ref in _chunk_data(problem):
        s, *parts = fn(problem.model.params, inputs, th, w, ref, e)
        sims.append(np.asarray(s))
        acc += np.asarray(parts, np.float64)
    return list(ops), acc, _loss_of(sims, problem.counts)


def grad_scores(problem: Problem, thresholds=None, int8_ops: Iterable[str] | None = None, *,
                int8_fn: Int8Fn | None = None) -> dict:
    """First-order sensitivity of every INT8 op of the configuration (default: all ops INT8, ``problem.th0``).

    Returns ``{"ops": [scored ops, graph order], "taylor": float64 (n,), "fisher": float64 (n,),
    "loss": exact loss of the configuration, "seconds": wall time}``.  ``taylor[k] = sum g*dy`` over elements
    and images (``g = dL/dy_k``, ``dy = y_int8 - y_float`` of op k in the all-INT8 context): the estimated
    loss reduction when op k alone is made float (larger = more sensitive); ``fisher[k] = sum (g*dy)^2``.
    ``L = 1 - mean over images of 0.5+0.5cos`` (outputs or compare layers, compare weights).
    ``taylor_requant`` / ``fisher_requant``: the same with ``dy = y_int8 - Q(y_float)`` for the ops of
    :func:`requantized_ops` (what their INT8 readers would see of a float output), else as ``taylor``; a closer
    estimate of the leave-one-out gain.  One compile per problem and configuration; raises :class:`~qsens.errors.SearchError` with a post-process."""
    t0 = time.perf_counter()
    ops, acc, loss = _scores_pass(problem, thresholds, int8_ops, int8_fn, None)
    return {"ops": ops, "taylor": acc[0], "fisher": acc[1], "taylor_requant": acc[2], "fisher_requant": acc[3],
            "loss": loss, "seconds": time.perf_counter() - t0}


def st_loss(problem: Problem, thresholds=None, *, int8_ops: Iterable[str] | None = None,
            perturb: Mapping[str, Any] | None = None, int8_fn: Int8Fn | None = None) -> float:
    """The loss of the ST model with ``perturb[op]`` (broadcast to the op's output at the chunk batch) added to
    INT8 op outputs; ``perturb=None`` gives the exact loss.  Same executable as :func:`grad_scores` (finite
    differences of it check the gradients)."""
    return _scores_pass(problem, thresholds, int8_ops, int8_fn, perturb)[2]


# ------------------------------------------------------------------------------------------ refinement
def fake_quant(x, th, signed: bool):
    """BM1684 fake quantization ``clip(round(x/s), lo, hi) * s`` with ``s = th/127`` ([-128, 127], signed) or
    ``th/255`` ([0, 255]); round half away from zero in the forward value, straight-through (identity) in the
    backward, so ``d/dth`` is LSQ's ``round(x/s) - x/s`` inside the range and ``lo``/``hi`` outside (times
    ``1/qmax``)."""
    lo, hi = qrange(signed)
    s = jnp.maximum(jnp.asarray(th, F32), jnp.float32(1e-12)) / jnp.float32(qmax_of(signed))
    v = x / s
    v = v + _sg(round_to_int(v, Round.HALF_AWAY_FROM_ZERO) - v)  # ST rounding
    return jnp.clip(v, lo, hi) * s


def _surrogate(plan: QuantPlan, op: Op, float_outs, th_eff):
    """The fake-quant float form of an INT8 op: its float output (run_graph's fast layout path, on the values
    flowing in the refinement model) fake-quantized with its output threshold.  The inputs are not fake-quantized
    again: an INT8 producer's value already carries its own output fake-quant, which is this op's input cast (same
    tensor, same threshold and sign after the copy map).  So an input made by the Input op or an F32 op gives its
    threshold no gradient through this op (documented in docs/variants.md)."""
    if op.type in FOLLOWS_INPUT_TYPE:  # lowered with its input's type: no cast of its own
        return float_outs[0]
    out = op.outputs[0]
    return fake_quant(float_outs[0], th_eff[plan.tensor_index[out]], plan.signed[out])


def _refine_fn(problem: Problem, ops: tuple[str, ...]) -> Callable:
    """``f(params, inputs, th, w, ref) -> (sims (chunk,), dL/dth (n_tensors,))``, jitted."""
    model, plan = problem.model, problem.plan
    taps = problem.compare or ()
    weights = problem.scorer.weights
    exact = _bm1684_int8(plan)

    def make():
        def chunk(params, inputs, th, w, ref):
            TRACES["refine"] += 1

            def combine(op, w_, acts, th_eff, float_outs):
                y = exact(op, w_, [_sg(a) for a in acts], _sg(th_eff))[0]
                s = _surrogate(plan, op, float_outs, th_eff)
                return [y + (s - _sg(s))]  # value: exactly y; gradient: the surrogate's

            def loss(th_):
                outs, tapped = _run(model, plan, params, inputs, th_, ops, combine, taps)
                sims = similarity(ref, _scored(taps, outs, tapped), weights, xp=jnp)
                return -jnp.sum(w * sims), sims

            (_, sims), gth = jax.value_and_grad(loss, has_aux=True)(th)
            return sims, gth

        return jax.jit(chunk)

    return _cached(problem, ("refine", ops), make)


_ADAM: dict[float, tuple] = {}


def _adam(lr: float):
    """(optax adam, jitted ``step(grad, state, params) -> (params, state)``) per learning rate."""
    if lr not in _ADAM:
        import optax

        opt = optax.adam(lr)

        def step(grad, state, p):
            upd, state = opt.update(grad, state, p)
            return optax.apply_updates(p, upd), state

        _ADAM[lr] = (opt, jax.jit(step))
    return _ADAM[lr]


def refine_thresholds(problem: Problem, thresholds, *, int8_ops: Iterable[str] | None = None, steps: int = 50,
                      lr: float = 0.02, seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Adam (optax) on the log of every threshold, minimising the exact loss of the INT8 configuration.

    Step k evaluates the loss and its surrogate gradient at the current table (step 0 = ``thresholds``), then
    updates ``log th``; thresholds are used through ``plan.effective`` (copy map, fixed ranges), so only the
    thresholds the model reads move (non-positive ones stay fixed).  The loss of every step is exact, and the
    best table seen is returned: ``{"thresholds": float32 (n_tensors,), "loss0", "best_loss",
    "history": [loss per step] (len ``steps``), "seconds"}``.  Full-batch and deterministic: ``seed`` is
    accepted for a stable interface and changes nothing (nothing is sampled)."""
    del seed
    _check(problem)
    t0 = time.perf_counter()
    ops = _ops_key(problem.plan, int8_ops)
    fn = _refine_fn(problem, ops)
    data = _chunk_data(problem)
    opt, step = _adam(float(lr))
    th0 = np.asarray(thresholds, np.float32)
    free = np.isfinite(th0) & (th0 > 0)
    logth = jnp.asarray(np.log(np.where(free, th0, 1.0)).astype(np.float32))
    state = opt.init(logth)
    th = th0
    best_th, best, history, loss0 = th0.copy(), np.inf, [], float("nan")
    for k in range(steps):
        dev_th = jax.device_put(th)
        sims, grad = [], np.zeros(th.shape, np.float64)
        for inputs, w, ref in data:
            s, gth = fn(problem.model.params, inputs, dev_th, w, ref)
            sims.append(np.asarray(s))
            grad += np.asarray(gth, np.float64)
        loss = _loss_of(sims, problem.counts)
        history.append(loss)
        if k == 0:
            loss0 = loss
        if loss < best:
            best, best_th = loss, th.copy()
        if log is not None:
            log(f"refine step {k + 1}/{steps}: loss {loss:.8f} best {best:.8f}")
        if k == steps - 1:
            break
        g_log = np.where(free, np.nan_to_num(grad * th, nan=0.0, posinf=0.0, neginf=0.0), 0.0)  # d/dlog th
        logth, state = step(jnp.asarray(g_log, F32), state, logth)
        th = np.where(free, np.exp(np.asarray(logth, np.float64)), th0).astype(np.float32)
    if steps <= 0:
        loss0 = best = st_loss(problem, th0, int8_ops=ops)
    return {"thresholds": best_th.astype(np.float32), "loss0": float(loss0), "best_loss": float(best),
            "history": history, "seconds": time.perf_counter() - t0}
