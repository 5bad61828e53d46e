"""Softmax and reductions."""

from __future__ import annotations

import numpy as np

from ..registry import register
from ._util import ints, norm_axis


@register("Softmax")
def softmax(xp, ins, attrs):
    x = ins[0]
    opset = attrs.get("_opset", 13)
    axis = attrs.get("axis", -1 if opset >= 13 else 1)
    axis = norm_axis(axis, x.ndim)
    if opset < 13:  # coerce to 2-D at `axis`
        shp = x.shape
        x2 = x.reshape(int(np.prod(shp[:axis])), -1)
        e = xp.exp(x2 - x2.max(axis=1, keepdims=True))
        return [(e / e.sum(axis=1, keepdims=True)).reshape(shp)]
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


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
