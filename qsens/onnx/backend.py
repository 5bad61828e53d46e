"""A thin, test-only ``onnx.backend.base.Backend`` over :func:`qsens.onnx.to_jax` (ONNX conformance suite).

``QsensBackend.prepare(model)`` checks the opset (models below opset 11 raise :class:`unittest.SkipTest`:
qsens does not support them, and the suite must not count them as passed) and returns a
:class:`QsensRep`.  ``QsensRep.run(inputs)`` converts the model with ``to_jax`` **once per input
signature** (shapes, dtypes and the values of the inputs that must be static), jits the apply function once
and returns numpy outputs cast to the ONNX-declared output element types (JAX without x64 computes int64 as
int32 and float64 as float32).

Two adaptations that the backend API forces, and how they are handled:

* **Static inputs given as graph inputs.**  qsens needs shapes, axes, pads, Resize scales, ... as constants
  (``static=`` in the registry), but node tests feed e.g. Reshape's shape as a graph input.  The backend API
  gives the values only at ``run`` time, so ``run`` re-writes such graph inputs (every graph input from which
  a static slot is reachable other than through ``Shape``/``Size``) into initializers holding the test's
  values, converts that model, and caches it per input signature.  The remaining graph inputs stay inputs.
* **Outputs that qsens folds to constants.**  ``to_jax`` refuses graph outputs that do not depend on a graph
  input's *values* (``Shape``, ``Size``, a model whose inputs were all baked, ...): qsens folds them on the
  host when it converts.  For such models ``run`` evaluates the graph with the same host-folding path the
  converter uses (each op's registry ``impl`` with ``xp=numpy``, or ``jax.numpy`` for ops that are not
  ``numpy_ok``), and :attr:`QsensRep.folded` records that this happened.

* **Inputs with different leading dims.**  qsens binds the leading dim of every graph input to one batch;
  when the (non-scalar) inputs of a node test disagree on it (broadcasting cases), each is fed as
  ``(1, *shape)`` and reshaped back by an inserted ``Reshape`` (:func:`_lead_unit_dim`).

``supports_device`` is True for ``"CPU"`` only (CI is CPU-only).
"""

from __future__ import annotations

import unittest
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep

from ..errors import ModelError
from . import registry
from .convert import to_jax
from .load import model_opset

MIN_OPSET = 11
_SHAPE_ONLY = {"Shape", "Size"}  # ops whose input's values never matter (only its static shape)


def static_graph_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs whose values reach a static slot (registry ``static=``) other than through Shape/Size."""
    inits = {i.name for i in model.graph.initializer}
    g_inputs = {v.name for v in model.graph.input} - inits
    producer = {o: n for n in model.graph.node for o in n.output if o}
    need: list[str] = []
    for n in model.graph.node:
        d = registry.OPS.get(n.op_type)
        if d is None:
            continue
        need += [n.input[k] for k in d.static if k < len(n.input) and n.input[k]]
    seen: set[str] = set()
    while need:
        t = need.pop()
        if t in seen:
            continue
        seen.add(t)
        p = producer.get(t)
        if p is not None and p.op_type not in _SHAPE_ONLY:
            need += [i for i in p.input if i]
    return seen & g_inputs


_LEAD = "__qsens_lead"


def _lead_unit_dim(m: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give every non-scalar graph input a leading unit dim and Reshape it back, in place.

    qsens binds the leading dim of *every* graph input to the batch (one batch for all inputs, as in the
    models TPU-MLIR quantizes), so inputs with different leading dims (broadcasting node tests) are fed as
    ``(1, *shape)`` and reshaped to ``shape`` by the model's first node.
    """
    new_inputs, nodes = [], []
    for v in m.graph.input:
        s = shapes.get(v.name)
        if not s:
            new_inputs.append(v)
            continue
        et = v.type.tensor_type.elem_type
        new_inputs.append(helper.make_tensor_value_info(v.name + _LEAD, et, (1,) + s))
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(s, np.int64), v.name + _LEAD + "_shape"))
        zero = {"allowzero": 1} if 0 in s and model_opset(m) >= 14 else {}
        nodes.append(helper.make_node("Reshape", [v.name + _LEAD, v.name + _LEAD + "_shape"], [v.name], **zero))
    del m.graph.input[:]
    m.graph.input.extend(new_inputs)
    old = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + old)


def _out_dtype(v: onnx.ValueInfoProto):
    et = v.type.tensor_type.elem_type
    if not et:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(et))
    except Exception:  # noqa: BLE001 - exotic types (float8, int4...) have no plain numpy dtype
        return None


def _cast(a, dt):
    a = np.asarray(a)
    return a if dt is None or a.dtype == dt else a.astype(dt)


def fold_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Evaluate ``model`` with the registry impls on the host (the converter's constant-folding path)."""
    from .canonical import _constant_node_value, _toposort

    opset = model_opset(model)
    env: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    env.update(feeds)
    for node in _toposort(model.graph.node, set(env)):
        if node.op_type == "Constant":
            env[node.output[0]] = _constant_node_value(node)
            continue
        d = registry.lookup(node.op_type, node_name=node.name or node.op_type, opset=opset, domain=node.domain)
        attrs = registry.node_attrs(node, opset)
        attrs["_opset"] = opset
        attrs["_n_outputs"] = len(node.output)
        ins = [env[i] if i else None for i in node.input]
        if node.op_type == "Size":
            outs = [np.asarray(np.size(ins[0]), np.int64)]
        else:
            xp = np if d.numpy_ok else jnp
            outs = d.impl(xp, [None if x is None else xp.asarray(x) for x in ins], attrs)
        for o, a in zip(node.output, outs):
            if o:
                env[o] = np.asarray(a)
    return [env[o.name] for o in model.graph.output]


class QsensRep(BackendRep):
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        inits = {i.name for i in model.graph.initializer}
        self.inputs = [v for v in model.graph.input if v.name not in inits]
        self.out_dtypes = [_out_dtype(v) for v in model.graph.output]
        self.static = static_graph_inputs(model)
        self._cache: dict[Any, Any] = {}
        self.folded = False

    def _compile(self, feeds: dict[str, np.ndarray]):
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        baked = [v for v in self.inputs if v.name in self.static]
        if baked:
            keep = [v for v in m.graph.input if v.name not in self.static]
            del m.graph.input[:]
            m.graph.input.extend(keep)
            m.graph.initializer.extend(numpy_helper.from_array(np.asarray(feeds[v.name]), v.name) for v in baked)
        dyn = [v.name for v in self.inputs if v.name not in self.static]
        if not dyn:
            return None, dyn
        shapes = [tuple(np.shape(feeds[n])) for n in dyn]
        if len({s[0] for s in shapes if s}) > 1:
            _lead_unit_dim(m, dict(zip(dyn, shapes)))
            shapes = [(1,) + s if s else s for s in shapes]
        try:
            fn, params = to_jax(m, input_shapes=shapes)
        except ModelError as e:
            if "does not depend on the model input" in str(e):
                return None, dyn
            raise
        jitted = jax.jit(lambda p, xs: fn(p, xs))
        lead = {v.name[: -len(_LEAD)] for v in m.graph.input if v.name.endswith(_LEAD)}
        names = [o.name for o in self.model.graph.output]

        def call(xs):
            xs = {(n + _LEAD if n in lead else n): (x[None] if n in lead else x) for n, x in xs.items()}
            out = jitted(params, xs)
            return [out[n] for n in names]

        return call, dyn

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:  # noqa: ARG002
        if isinstance(inputs, dict):
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            if not isinstance(inputs, list | tuple):
                inputs = [inputs]
            feeds = {v.name: np.asarray(x) for v, x in zip(self.inputs, inputs)}
        key = tuple(
            (n, a.shape, a.dtype.str, a.tobytes() if n in self.static else None) for n, a in sorted(feeds.items())
        )
        if key not in self._cache:
            self._cache[key] = self._compile(feeds)
        call, dyn = self._cache[key]
        if call is None:
            self.folded = True
            outs = fold_graph(self.model, feeds)
        else:
            outs = call({n: jnp.asarray(feeds[n]) for n in dyn})
        return tuple(_cast(o, dt) for o, dt in zip(outs, self.out_dtypes))


class QsensBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> QsensRep:
        opset = model_opset(model)
        if opset < MIN_OPSET:
            raise unittest.SkipTest(f"opset {opset} < {MIN_OPSET}: qsens supports opset >= {MIN_OPSET}")
        registry.supported_ops()  # load the op modules
        return QsensRep(model)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = QsensBackend.prepare
run_model = QsensBackend.run_model
supports_device = QsensBackend.supports_device
