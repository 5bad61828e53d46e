"""The explicit ONNX op registry.

Every supported ONNX op type is registered here (by the modules in ``qsens.onnx.ops``) with

* ``impl(xp, inputs, attrs) -> list of outputs``: ONNX semantics, written once for ``xp`` = numpy (constant
  folding on the host, exact int64 shape arithmetic) or ``jax.numpy`` (the traced model);
* ``static``: the input positions that must be compile-time constants (shapes, axes, pads, Clip bounds, ...):
  they are resolved by constant folding when the model is converted, never from sample data;
* ``since``: the lowest opset supported (models below it get a clear error).

Attribute defaults come from the ONNX schema at the model's opset (``onnx.defs.get_schema``), compared with
``is None``, never by truthiness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import onnx
from onnx import helper

from ..errors import UnsupportedOpError


@dataclasses.dataclass(frozen=True)
class OpDef:
    op_type: str
    impl: Callable[..., list]
    static: tuple[int, ...] = ()  # input positions that must be constants
    since: int = 1
    numpy_ok: bool = True  # impl also runs with xp=numpy (constant folding)


OPS: dict[str, OpDef] = {}


def register(op_type: str, *, static: tuple[int, ...] = (), since: int = 1, numpy_ok: bool = True):
    def deco(fn):
        if op_type in OPS:
            raise RuntimeError(f"op {op_type} registered twice")
        OPS[op_type] = OpDef(op_type, fn, tuple(static), since, numpy_ok)
        return fn

    return deco


def supported_ops() -> list[str]:
    """The ONNX op types qsens converts (internal types such as ``qsens.Chain`` are not listed)."""
    _load_all()
    return sorted(t for t in OPS if "." not in t)


def lookup(op_type: str, *, node_name: str, opset: int, domain: str = "") -> OpDef:
    _load_all()
    d = OPS.get(op_type) if domain in ("", "ai.onnx") and "." not in op_type else None
    if d is None:
        raise UnsupportedOpError(
            f"node '{node_name}': op {op_type!r} (domain {domain or 'ai.onnx'}, opset {opset}) is not supported "
            f"by qsens; supported ops: {', '.join(supported_ops())}. Add it in qsens/onnx/ops/ (see README 'Adding an op')."
        )
    if opset < d.since:
        raise UnsupportedOpError(
            f"node '{node_name}': op {op_type} at opset {opset} is older than qsens supports (>= {d.since}); "
            f"re-export the model with opset >= {max(d.since, 11)}."
        )
    return d


_SCHEMA_CACHE: dict[tuple[str, int], dict[str, Any]] = {}


def attr_defaults(op_type: str, opset: int) -> dict[str, Any]:
    key = (op_type, opset)
    if key not in _SCHEMA_CACHE:
        out: dict[str, Any] = {}
        try:
            schema = onnx.defs.get_schema(op_type, max_inclusive_version=opset, domain="")
        except Exception:  # noqa: BLE001 - unknown to this onnx version: no defaults
            schema = None
        if schema is not None:
            for name, a in schema.attributes.items():
                dv = a.default_value
                if dv is not None and dv.type != 0:
                    out[name] = _attr_value(dv)
        _SCHEMA_CACHE[key] = out
    return dict(_SCHEMA_CACHE[key])


def _attr_value(a: onnx.AttributeProto) -> Any:
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return tuple(x.decode() if isinstance(x, bytes) else x for x in v)
    if isinstance(v, onnx.TensorProto):
        from onnx import numpy_helper

        return numpy_helper.to_array(v)
    return v


def node_attrs(node: onnx.NodeProto, opset: int) -> dict[str, Any]:
    """Attributes of ``node`` with the schema's defaults filled in."""
    attrs = attr_defaults(node.op_type, opset)
    for a in node.attribute:
        attrs[a.name] = _attr_value(a)
    return attrs


#: Internal op type of a fused pattern (:mod:`qsens.onnx.patterns`): runs its ONNX nodes one after another.
CHAIN = "qsens.Chain"


@register(CHAIN)
def _chain(xp, ins, attrs):
    """``attrs["chain"]`` = steps ``(onnx_type, frozen attrs, args)``; an arg is ``"x"`` (the input), ``"cK"``
    (``ins[1 + K]``, a weight or constant), ``"sK"`` (step K's output) or ``""`` (omitted)."""
    _load_all()
    vals = {"x": ins[0], **{f"c{k}": v for k, v in enumerate(ins[1:])}}
    steps = attrs["chain"]
    for k, (t, a, args) in enumerate(steps):
        vals[f"s{k}"] = OPS[t].impl(xp, [vals[r] if r else None for r in args], dict(a))[0]
    return [vals[f"s{len(steps) - 1}"]]


_LOADED = False


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        from .ops import ALL  # noqa: F401  (registers every op module)

        _LOADED = True
