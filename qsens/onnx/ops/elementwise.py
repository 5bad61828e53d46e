"""Element-wise ONNX ops (numpy-broadcasting semantics)."""

from __future__ import annotations

import numpy as np

from ..registry import register


def _binary(op_type, fn):
    @register(op_type)
    def impl(xp, ins, attrs, _fn=fn):
        return [_fn(xp, ins[0], ins[1])]

    return impl


_binary("Add", lambda xp, a, b: a + b)
_binary("Sub", lambda xp, a, b: a - b)
_binary("Mul", lambda xp, a, b: a * b)
_binary("Pow", lambda xp, a, b: xp.power(a, b).astype(a.dtype))
_binary("Equal", lambda xp, a, b: a == b)
_binary("Greater", lambda xp, a, b: a > b)
_binary("Less", lambda xp, a, b: a < b)


@register("Div")
def div(xp, ins, attrs):
    a, b = ins
    if np.issubdtype(np.dtype(a.dtype), np.integer):
        # ONNX integer Div truncates toward zero
        q = xp.abs(a) // xp.abs(b)
        return [(xp.sign(a) * xp.sign(b) * q).astype(a.dtype)]
    return [a / b]


def _unary(op_type, fn):
    @register(op_type)
    def impl(xp, ins, attrs, _fn=fn):
        return [_fn(xp, ins[0], attrs)]

    return impl


def _jnn():
    import jax

    return jax.nn


_unary("Relu", lambda xp, x, a: xp.maximum(x, xp.zeros((), x.dtype)))
_unary("Neg", lambda xp, x, a: -x)
_unary("Abs", lambda xp, x, a: xp.abs(x))
_unary("Exp", lambda xp, x, a: xp.exp(x))
_unary("Log", lambda xp, x, a: xp.log(x))
_unary("Sqrt", lambda xp, x, a: xp.sqrt(x))
_unary("Reciprocal", lambda xp, x, a: 1 / x)
_unary("Tanh", lambda xp, x, a: xp.tanh(x))
_unary("Sigmoid", lambda xp, x, a: 1 / (1 + xp.exp(-x)))
_unary("Identity", lambda xp, x, a: x)
_unary("Floor", lambda xp, x, a: xp.floor(x))
_unary("Ceil", lambda xp, x, a: xp.ceil(x))
_unary(
    "LeakyRelu",
    lambda xp, x, a: xp.where(x >= 0, x, x * xp.asarray(a.get("alpha", 0.01), x.dtype)),
)
_unary(
    "HardSigmoid",
    lambda xp, x, a: xp.clip(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1).astype(x.dtype),
)
_unary("HardSwish", lambda xp, x, a: x * xp.clip(x / 6 + 0.5, 0, 1).astype(x.dtype))


@register("Dropout")
def dropout(xp, ins, attrs):
    # inference: identity (mask output, if requested, is all ones)
    x = ins[0]
    return [x, xp.ones(x.shape, dtype=bool)]


@register("Clip", static=(1, 2))
def clip(xp, ins, attrs):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else attrs.get("max")
    if lo is not None:
        x = xp.maximum(x, xp.asarray(lo, dtype=x.dtype))
    if hi is not None:
        x = xp.minimum(x, xp.asarray(hi, dtype=x.dtype))
    return [x]


@register("PRelu")
def prelu(xp, ins, attrs):
    x, slope = ins
    return [xp.where(x >= 0, x, x * slope)]


@register("Cast")
def cast(xp, ins, attrs):
    from ._util import onnx_dtype_to_np

    dt = onnx_dtype_to_np(attrs["to"])
    x = ins[0]
    if xp is not np and dt == np.int64:
        dt = np.int32  # JAX without x64 has no int64 (documented)
    if xp is not np and dt == np.float64:
        dt = np.float32
    return [x.astype(dt)]


@register("Where")
def where(xp, ins, attrs):
    return [xp.where(ins[0], ins[1], ins[2])]


def _variadic(op_type, fn):
    @register(op_type)
    def impl(xp, ins, attrs, _fn=fn):
        out = ins[0]
        for x in ins[1:]:
            out = _fn(xp, out, x)
        return [out]

    return impl


_variadic("Max", lambda xp, a, b: xp.maximum(a, b))
_variadic("Min", lambda xp, a, b: xp.minimum(a, b))
_variadic("Sum", lambda xp, a, b: a + b)
