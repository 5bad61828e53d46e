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
_reduce("ReduceMax", lambda xp, x, a, k: x.max(axis=a, keepdims=k))
_reduce("ReduceMin", lambda xp, x, a, k: x.min(axis=a, keepdims=k))
_reduce("ReduceL2", lambda xp, x, a, k: xp.sqrt((x * x).sum(axis=a, keepdims=k)))
