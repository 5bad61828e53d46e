"""``to_jax``: an ONNX model as a pure JAX function over the canonical graph."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..errors import ModelError
from . import registry
from .canonical import Canonicalizer
from .ir import Graph, Op
from .load import load_model, resolve_input_shapes


def run_op(op: Op, params: Mapping[str, Any], acts: Sequence[Any]) -> list:
    """Float (reference) execution of one canonical op: its ONNX implementation plus a fused ReLU."""
    d = registry.OPS[op.onnx_type]
    weights = dict(op.weights)
    consts = dict(op.consts)
    ins = []
    for kind, ref in op.slots:
        if kind == "act":
            ins.append(acts[ref])
        elif kind == "weight":
            ins.append(params[weights[ref]])
        elif kind == "const":
            ins.append(consts[ref])
        else:
            ins.append(None)
    attrs = dict(op.attrs)
    if op.onnx_type == "Clip" or op.onnx_type == "Relu":
        outs = d.impl(jnp, ins, attrs)
    else:
        outs = d.impl(jnp, ins, attrs)
        if attrs.get("do_relu"):
            y = jnp.maximum(outs[0], jnp.zeros((), outs[0].dtype))
            lim = attrs.get("relu_limit", -1.0)
            if lim is not None and lim >= 0:
                y = jnp.minimum(y, jnp.asarray(lim, y.dtype))
            outs = [y] + list(outs[1:])
    return [o for o, name in zip(outs, op.outputs)]


def run_graph(
    graph: Graph,
    params: Mapping[str, Any],
    env: dict[str, Any],
    start: int = 0,
    stop: int | None = None,
    *,
    keep: Sequence[str] = (),
    op_fn=None,
) -> dict[str, Any]:
    """Run ``graph.ops[start:stop]`` on the tensors in ``env`` (activations by canonical tensor name).

    Returns the new env holding only tensors still needed after ``stop`` (by liveness) plus ``keep``.
    ``op_fn(op, params, acts) -> outputs`` replaces :func:`run_op` (the quantized model plugs in here).
    """
    stop = len(graph.ops) if stop is None else stop
    op_fn = op_fn or run_op
    last = graph.last_use
    keep = set(keep)
    env = dict(env)
    for i in range(start, stop):
        op = graph.ops[i]
        if op.type == "Input":
            continue
        outs = op_fn(op, params, [env[t] for t in op.inputs])
        for t, v in zip(op.outputs, outs):
            env[t] = v
        for t in set(op.inputs):
            if last.get(t, -1) <= i and t not in keep:
                env.pop(t, None)
    return env


class Model:
    """A converted model: canonical graphs (per batch size) and float params.

    ``Model.apply(params, inputs, taps=())`` is the pure function returned by :func:`to_jax`.
    """

    def __init__(self, model_or_path, input_shapes=None, *, name_style: str = "tpu_mlir"):
        proto, path = load_model(model_or_path)
        shapes = resolve_input_shapes(proto, input_shapes, path)
        self.path = path
        self.canon = Canonicalizer(proto, path, shapes, name_style)
        self.graph = self.canon.graph(self.canon.deploy_batch)
        self.params = {k: jnp.asarray(v) for k, v in self.canon.params.items()}

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
        x0 = inputs[g0.inputs[0]]
        batch = int(np.shape(x0)[0]) if np.ndim(x0) else 1
        g = self.graph_at(batch)
        for name, shp in zip(g.inputs, g.input_shapes):
            got = tuple(np.shape(inputs[name]))
            if got != tuple(shp):
                raise ModelError(f"input '{name}' has shape {list(got)}, the model expects {list(shp)} (batch {batch}); check --input_shapes / preprocessing.")
        env = {n: jnp.asarray(inputs[n]) for n in g.inputs}
        return g, env

    def apply(self, params, inputs, *, taps: Sequence[str] = ()):
        g, env = self.input_env(inputs)
        taps = tuple(taps)
        tensors = set(g.tensors)
        bad = [t for t in taps if t not in tensors]
        if bad:
            raise ModelError(f"taps {bad[:5]} are not canonical tensors of '{self.path}' (see `qsens ops MODEL`).")
        env = run_graph(g, params, env, keep=taps)
        outs = {name: env[t] for name, t in zip(g.output_names, g.outputs)}
        if taps:
            return outs, {t: env[t] for t in taps}
        return outs


def to_jax(model_or_path, input_shapes=None, *, name_style: str = "tpu_mlir"):
    """Convert an ONNX model to ``(apply_fn, params)``.

    ``apply_fn(params, inputs, *, taps=())``: ``inputs`` is a dict of input arrays (or one array); the result is a
    dict of graph outputs in graph order, and with ``taps`` (a static tuple of canonical tensor names) a pair
    ``(outputs, tapped)``.  Pure and jit-able: ``jax.jit(apply_fn, static_argnames="taps")``.  The leading
    (batch) dim of the inputs may differ from the deployment batch; the graph is re-derived per batch.
    ``apply_fn.model`` is the :class:`Model` (canonical graph: ``apply_fn.model.graph``).
    """
    m = Model(model_or_path, input_shapes, name_style=name_style)

    def apply_fn(params, inputs, *, taps: Sequence[str] = ()):
        return m.apply(params, inputs, taps=taps)

    apply_fn.model = m
    apply_fn.graph = m.graph
    return apply_fn, m.params
