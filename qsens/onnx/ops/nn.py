"""Softmax, LogSoftmax and reductions."""

from __future__ import annotations

import numpy as np

from ..registry import register
from ._util import ints, norm_axis


def _centered(xp, x, axis: int):
    """``x - max(x)`` along ``axis``, every entry <= 0 and 0 at the row's maximum, even under ``jax.jit``.

    XLA recomputes cheap producers inside each consumer fusion, and on CPU LLVM contracts ``a * c - max`` into
    one FMA; then ``x`` as seen by the max differs from ``x`` as seen by the exponential by the product's
    rounding error (half an ulp of ``x``: 256 at 7e9, 4e22 at 1e30), so ``exp`` overflows (inf/inf) or every
    term underflows (0/0).  Centring twice removes that: every fusion that recomputes ``d = x - m1`` emits it in
    the same (possibly FMA-contracted) form, so ``d - max(d)``, a plain subtraction of a reduced value, is 0 at
    the maximum (checked under jit in tests/test_softmax_robust.py; it rests on XLA emitting one form, which is
    what it does).  Clamping at 0 keeps ``exp <= 1`` whatever remains.  The maxima are constants to autodiff
    (``stop_gradient``: the result is shift invariant).

    A row that is all -inf (fully masked) becomes a row of zeros, i.e. uniform, the limit of a row of equal
    values (``-inf - -inf`` would be NaN; onnxruntime gives NaN there).  NaN or +inf in a row still gives NaN.
    """
    sg = (lambda v: v) if xp is np else _stop_gradient()
    zero = np.zeros((), x.dtype)
    m = sg(x.max(axis=axis, keepdims=True))
    masked = m == -np.inf
    x = xp.where(masked, zero, x)
    d = x - xp.where(masked, zero, m)
    d = d - sg(d.max(axis=axis, keepdims=True))
    return xp.where(d > zero, zero, d)  # not minimum(d, 0): its gradient is halved at the tie d == 0


def _stop_gradient():
    from jax import lax

    return lax.stop_gradient


def _softmax_family(xp, x, attrs, fn):
    """ONNX's axis semantics: opset >= 13 along ``axis`` (default -1); older opsets coerce to 2-D at ``axis``
    (default 1) and normalise each row."""
    opset = attrs.get("_opset", 13)
    axis = norm_axis(attrs.get("axis", -1 if opset >= 13 else 1), x.ndim)
    if opset < 13:
        shp = x.shape
        return fn(xp, x.reshape(int(np.prod(shp[:axis])), -1), 1).reshape(shp)
    return fn(xp, x, axis)


def _softmax(xp, x, axis):
    e = xp.exp(_centered(xp, x, axis))
    return e / e.sum(axis=axis, keepdims=True)  # the row's maximum contributes exp(0) = 1: the sum is >= 1


def _log_softmax(xp, x, axis):
    d = _centered(xp, x, axis)
    return d - xp.log(xp.exp(d).sum(axis=axis, keepdims=True))  # log of a sum in [1, n]


@register("Softmax")
def softmax(xp, ins, attrs):
    return [_softmax_family(xp, ins[0], attrs, _softmax)]


@register("LogSoftmax")
def log_softmax(xp, ins, attrs):
    return [_softmax_family(xp, ins[0], attrs, _log_softmax)]


def reduce_axes(ins, attrs, rank):
    """Axes from the attribute (old opsets) or the second input (ReduceMean >= 18, ReduceSum >= 13)."""
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("axes")
    if axes is None or len(ints(axes)) == 0:
        if attrs.get("noop_with_empty_axes", 0):
            return None
        return tuple(range(rank))
    return tuple(sorted(norm_axis(a, rank) for a in ints(axes)))


def _reduce(op_type, fn):
    @register(op_type, static=(1,))
    def impl(xp, ins, attrs, _fn=fn):
        x = ins[0]
        axes = reduce_axes(ins, attrs, x.ndim)
        if axes is None:
            return [x]
        keep = bool(attrs.get("keepdims", 1))
        return [_fn(xp, x, axes, keep)]

    return impl


_reduce("ReduceMean", lambda xp, x, a, k: x.mean(axis=a, keepdims=k))
_reduce("ReduceSum", lambda xp, x, a, k: x.sum(axis=a, keepdims=k))
def _extremum(xp, x, axes, keep, fn, sign):
    if any(x.shape[a] == 0 for a in axes):  # reduction over an empty set: the identity (-inf for max)
        dt = np.dtype(x.dtype)
        if dt == np.bool_:
            ident = sign < 0
        elif np.issubdtype(dt, np.integer):
            ident = np.iinfo(dt).min if sign > 0 else np.iinfo(dt).max
        else:
            ident = -np.inf if sign > 0 else np.inf
        shp = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else tuple(
            d for i, d in enumerate(x.shape) if i not in axes)
        return xp.full(shp, ident, dtype=x.dtype)
    return fn(x, axis=axes, keepdims=keep)


_reduce("ReduceMax", lambda xp, x, a, k: _extremum(xp, x, a, k, xp.max, +1))
_reduce("ReduceMin", lambda xp, x, a, k: _extremum(xp, x, a, k, xp.min, -1))
_reduce("ReduceL2", lambda xp, x, a, k: xp.sqrt((x * x).sum(axis=a, keepdims=k)))
