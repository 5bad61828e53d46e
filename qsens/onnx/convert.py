"""``to_jax``: an ONNX model as a pure JAX function over the canonical graph."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ModelError
from . import registry
from .canonical import Canonicalizer
from .ir import Graph, Op, batch_separable  # noqa: F401  (batch_separable: public here too)
from .load import load_model, resolve_input_shapes


def run_op(op: Op, params: Mapping[str, Any], acts: Sequence[Any]) -> list:
    """Float (reference) execution of one canonical op in NCHW: its ONNX implementation plus a fused ReLU."""
    return run_op_roles(op, {r: params[k] for r, k in op.weights}, acts)


def onnx_inputs(op: Op, weights: Mapping[str, Any], acts: Sequence[Any], const_fn=None) -> list:
    """The ONNX positional inputs of ``op``'s main node: activations, weights (by role), constants, ``None``.
    ``const_fn`` maps weights and constants (e.g. a layout permutation)."""
    consts = dict(op.consts)
    f = const_fn or (lambda v: v)
    ins = []
    for kind, ref in op.slots:
        if kind == "act":
            ins.append(acts[ref])
        elif kind == "weight":
            ins.append(f(weights[ref]))
        elif kind == "const":
            ins.append(f(consts[ref]))
        else:
            ins.append(None)
    return ins


def run_op_roles(op: Op, weights: Mapping[str, Any], acts: Sequence[Any]) -> list:
    """:func:`run_op` with the weights given by role (``{"filter": W, ...}``): shareable between ops.
    An op with the ``per_sample`` attribute (a fixed-batch model run sample by sample: :attr:`Graph.per_sample`)
    runs once per deployment batch of its stacked inputs."""
    ps = op.attr("per_sample")
    if ps:
        return _run_per_sample(op, weights, acts, ps)
    outs = registry.OPS[op.onnx_type].impl(jnp, onnx_inputs(op, weights, acts), dict(op.attrs))
    if op.type != "Relu":
        outs = [_relu(op, outs[0])] + list(outs[1:])
    return list(outs)


def _run_per_sample(op: Op, weights: Mapping[str, Any], acts: Sequence[Any], ps) -> list:
    """``lax.map`` of ``op`` (at its deployment shapes) over the ``n`` deployment batches stacked in ``acts``."""
    n, in_shapes, out_shapes = ps
    plain = dataclasses.replace(op, attrs=tuple((k, v) for k, v in op.attrs if k != "per_sample"))
    xs = tuple(jnp.reshape(a, (n,) + tuple(s)) for a, s in zip(acts, in_shapes))
    ys = jax.lax.map(lambda x: tuple(run_op_roles(plain, weights, list(x))), xs)
    return [jnp.reshape(y, (n * s[0],) + tuple(s[1:]) if s else (n,)) for y, s in zip(ys, out_shapes)]


def _relu(op: Op, y):
    if op.attr("do_relu"):
        y = jnp.maximum(y, jnp.zeros((), y.dtype))
        lim = op.attr("relu_limit", -1.0)
        if lim is not None and lim >= 0:
            y = jnp.minimum(y, jnp.asarray(lim, y.dtype))
    return y


def layout_plan(graph: Graph, params: Mapping[str, Any], channels_last: bool = True) -> dict[str, bool]:
    """Static layout of every tensor while the graph runs: True = NHWC (its producer runs channel-last)."""
    from . import layout as L

    plan: dict[str, bool] = {}
    for op in graph.ops:
        use = False
        if channels_last and op.type != "Input" and not op.attr("per_sample"):
            weights = {r: params[k] for r, k in op.weights}
            use = L.nhwc_ok(op, [graph.tensor_shape(t) for t in op.inputs], weights, dict(op.consts))
        for t in op.outputs:
            plan[t] = use
    return plan


def op_runs_nhwc(op: Op, plan: Mapping[str, bool]) -> bool:
    return bool(op.outputs) and plan.get(op.outputs[0], False)


def run_op_planned(op: Op, weights: Mapping[str, Any], acts: Sequence[Any], in_nhwc: Sequence[bool], nhwc: bool) -> list:
    """Run ``op`` on activations laid out as ``in_nhwc`` says; outputs NHWC iff ``nhwc``."""
    from . import layout as L

    if nhwc:
        xs = [a if f else jnp.transpose(a, L.TO_NHWC) for a, f in zip(acts, in_nhwc)]
        outs = L.run_nhwc(op, xs, weights, dict(op.consts))
        return [_relu(op, outs[0])] + list(outs[1:])
    xs = [jnp.transpose(a, L.TO_NCHW) if f else a for a, f in zip(acts, in_nhwc)]
    return run_op_roles(op, weights, xs)


def run_graph(
    graph: Graph,
    params: Mapping[str, Any],
    env: dict[str, Any],
    start: int = 0,
    stop: int | None = None,
    *,
    keep: Sequence[str] = (),
    mix_fn=None,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Run ``graph.ops[start:stop]`` on the tensors in ``env`` (activations by canonical tensor name, NCHW).

    Returns the new env holding only tensors still needed after ``stop`` (by liveness) plus ``keep``, all
    in the graph's own (ONNX, NCHW) layout.
    ``mix_fn(op, params, acts) -> None or (outputs, flag)`` computes an alternative (e.g. INT8) result in NCHW;
    the op's output is ``where(flag, alternative, float)``, so a False flag gives the float result bit for bit.
    A ``mix_fn`` with the attribute ``wants_float = True`` is called ``mix_fn(op, params, acts, float_outs)`` with
    the op's float outputs (NCHW, computed on the fast layout path) as well.
    With ``channels_last`` 4-D activations are kept NHWC inside (:func:`layout_plan`).
    """
    from . import layout as L

    stop = len(graph.ops) if stop is None else stop
    plan = layout_plan(graph, params, channels_last)
    last = graph.last_use
    keep = set(keep)
    cur = dict(env)
    nhwc: set[str] = set()
    for i in range(start, stop):
        op = graph.ops[i]
        if op.type == "Input":
            continue
        out_nhwc = op_runs_nhwc(op, plan)
        weights = {r: params[k] for r, k in op.weights}
        outs = run_op_planned(op, weights, [cur[t] for t in op.inputs], [t in nhwc for t in op.inputs], out_nhwc)
        if mix_fn is not None:
            acts = [jnp.transpose(cur[t], L.TO_NCHW) if t in nhwc else cur[t] for t in op.inputs]
            if getattr(mix_fn, "wants_float", False):  # it also gets the float outputs (NCHW), e.g. to build on them
                alt = mix_fn(op, params, acts, [jnp.transpose(f, L.TO_NCHW) if out_nhwc else f for f in outs])
            else:
                alt = mix_fn(op, params, acts)
            if alt is not None:
                alt_outs, flag = alt
                outs = [jnp.where(flag, jnp.transpose(a, L.TO_NHWC) if out_nhwc else a, f) for a, f in zip(alt_outs, outs)]
        for t, v in zip(op.outputs, outs):
            cur[t] = v
            if out_nhwc:
                nhwc.add(t)
            else:
                nhwc.discard(t)
        for t in set(op.inputs):
            if last.get(t, -1) <= i and t not in keep:
                cur.pop(t, None)
                nhwc.discard(t)
    return {t: (jnp.transpose(v, L.TO_NCHW) if t in nhwc else v) for t, v in cur.items()}


#: Samples per step when a CPU forward runs the batch in chunks (``Model.apply``).  Measured on the 2-core
#: machine, Lite0 batch 32: whole batch 169 ms, chunks of 16 / 8 / 4: 142 / 134 / 177 ms (benchmarks/forward.py).
CPU_CHUNK = 8

class Model:
    """A converted model: canonical graphs (per batch size) and float params.

    ``Model.apply(params, inputs, taps=())`` is the pure function returned by :func:`to_jax`.
    """

    def __init__(self, model_or_path, input_shapes=None, *, name_style: str = "tpu_mlir", names_map=None):
        proto, path = load_model(model_or_path)
        shapes = resolve_input_shapes(proto, input_shapes, path)
        self.path = path
        self.canon = Canonicalizer(proto, path, shapes, name_style, names_map)
        self.graph = self.canon.graph(self.canon.deploy_batch)
        self.params = {k: jax.device_put(v) for k, v in self.canon.params.items()}
        self._separable: dict[tuple[int, int], bool] = {}

    def graph_at(self, batch: int) -> Graph:
        return self.canon.graph(batch)

    def input_env(self, inputs: Mapping[str, Any] | Sequence[Any] | Any) -> tuple[Graph, dict[str, Any]]:
        g0 = self.graph
        if not isinstance(inputs, Mapping):
            if isinstance(inputs, list | tuple):
                inputs = dict(zip(g0.inputs, inputs))
            else:
                inputs = {g0.inputs[0]: inputs}
        missing = [n for n in g0.inputs if n not in inputs]
        if missing:
            raise ModelError(f"inputs {missing} missing; the model '{self.path}' takes {list(g0.inputs)}.")
        batch = self.canon.deploy_batch
        for name, flag in zip(g0.inputs, self.canon.batch_inputs):
            if flag and np.ndim(inputs[name]):
                batch = int(np.shape(inputs[name])[0])
                break
        g = self.graph_at(batch)
        for name, shp in zip(g.inputs, g.input_shapes):
            got = tuple(np.shape(inputs[name]))
            if got != tuple(shp):
                raise ModelError(f"input '{name}' has shape {list(got)}, the model expects {list(shp)} (batch {batch}); check --input_shapes / preprocessing.")
        env = {n: jnp.asarray(inputs[n]) for n in g.inputs}
        return g, env

    def chunk_for(self, batch: int, chunk: int | None = None) -> int:
        """Samples per step for a forward at ``batch`` (0: the whole batch at once); ``chunk`` is the most per step.

        ``chunk=None`` picks :data:`CPU_CHUNK` on the CPU backend and 0 elsewhere (GPU/TPU want the whole batch).
        Chunking needs a batch-rebindable model whose graph is :func:`batch_separable`; otherwise it is 0.
        On CPU, chunks keep each layer's activations in cache (Lite0 batch 32: 169 -> 134 ms) and results are
        the same per sample (each sample's sums do not depend on the others).
        """
        if chunk is None:
            chunk = CPU_CHUNK if jax.default_backend() == "cpu" else 0
        if not chunk or batch <= chunk or not all(self.canon.batch_inputs):
            return 0
        chunk = -(-batch // -(-batch // chunk))  # as many steps as `chunk` needs, evened out: 10 -> 5+5, not 8+8
        key = (batch, chunk)
        if key not in self._separable:
            try:
                self._separable[key] = batch_separable(self.graph_at(batch), self.graph_at(chunk))
            except ModelError:
                self._separable[key] = False
        return chunk if self._separable[key] else 0

    def apply(self, params, inputs, *, taps: Sequence[str] = (), chunk: int | None = None):
        g, env = self.input_env(inputs)
        taps = tuple(taps)
        tensors = set(g.tensors)
        bad = [t for t in taps if t not in tensors]
        if bad:
            raise ModelError(f"taps {bad[:5]} are not canonical tensors of '{self.path}' (see `qsens ops MODEL`).")
        c = self.chunk_for(g.batch, chunk)
        if c:
            outs_l, taps_l = self._apply_chunked(params, env, g, c, taps)
        else:
            env = run_graph(g, params, env, keep=taps)
            outs_l, taps_l = [env[t] for t in g.outputs], [env[t] for t in taps]
        outs = dict(zip(g.output_names, outs_l))
        if taps:
            return outs, dict(zip(taps, taps_l))
        return outs

    def _apply_chunked(self, params, env, g: Graph, c: int, taps: tuple[str, ...]):
        """``lax.map`` of the graph at batch ``c`` over the batch (zero-padded to a multiple of ``c``)."""
        b = g.batch
        steps = -(-b // c)
        gc = self.graph_at(c)

        def split(x):
            x = jnp.pad(x, [(0, steps * c - b)] + [(0, 0)] * (x.ndim - 1)) if steps * c != b else x
            return x.reshape((steps, c) + x.shape[1:])

        def body(xs):
            e = run_graph(gc, params, dict(xs), keep=taps)
            return [e[t] for t in gc.outputs], [e[t] for t in taps]

        outs, tapped = jax.lax.map(body, {n: split(v) for n, v in env.items()})

        def join(y):
            return y.reshape((steps * c,) + y.shape[2:])[:b]

        return [join(y) for y in outs], [join(y) for y in tapped]


def to_jax(model_or_path, input_shapes=None, *, name_style: str = "tpu_mlir", names_map=None):
    """Convert an ONNX model to ``(apply_fn, params)``.

    ``input_shapes``: TPU-MLIR's ``--input_shapes`` as a list (``[[1,3,224,224]]``, one shape per input) or its
    string, or a dict by input name (``{"input": [1,3,224,224]}``, every input named); ``None`` takes the
    declared shapes with a symbolic leading dim bound to 1 (:func:`qsens.onnx.load.resolve_input_shapes`).
    ``apply_fn(params, inputs, *, taps=())``: ``inputs`` is a dict of input arrays (or one array); the result is a
    dict of graph outputs in graph order, and with ``taps`` (a static tuple of canonical tensor names) a pair
    ``(outputs, tapped)``.  Pure and jit-able: ``jax.jit(apply_fn, static_argnames="taps")``.  The leading
    (batch) dim of the inputs may differ from the deployment batch; the graph is re-derived per batch.
    ``apply_fn.model`` is the :class:`Model` (canonical graph: ``apply_fn.model.graph``).  ``chunk`` (static):
    samples per step on CPU (:meth:`Model.chunk_for`; default :data:`CPU_CHUNK`, 0 = the whole batch at once).
    ``names_map``: ``{canonical name: name}`` renaming ops and tensors (the user's TPU-MLIR names, ``qsens names``).
    """
    m = Model(model_or_path, input_shapes, name_style=name_style, names_map=names_map)

    def apply_fn(params, inputs, *, taps: Sequence[str] = (), chunk: int | None = None):
        return m.apply(params, inputs, taps=taps, chunk=chunk)

    apply_fn.model = m
    apply_fn.graph = m.graph
    return apply_fn, m.params
