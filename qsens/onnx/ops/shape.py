"""Shape and data-movement ops.  Shape-valued inputs are static (folded when the model is converted)."""

from __future__ import annotations

import numpy as np

from ..registry import register
from ._util import ints, norm_axis, onnx_dtype_to_np


@register("Shape")
def shape(xp, ins, attrs):
    s = np.asarray(ins[0].shape, dtype=np.int64)
    r = len(s)
    start = attrs.get("start", 0)
    end = attrs.get("end")
    start = norm_axis(start, r) if start is not None else 0
    end = r if end is None else (norm_axis(end, r) if end < 0 else min(end, r))
    return [s[max(start, 0) : end]]


@register("Reshape", static=(1,))
def reshape(xp, ins, attrs):
    x = ins[0]
    shp = list(ints(ins[1]))
    allowzero = attrs.get("allowzero", 0)
    if not allowzero:
        shp = [x.shape[i] if d == 0 else d for i, d in enumerate(shp)]
    return [x.reshape(shp)]


@register("Flatten")
def flatten(xp, ins, attrs):
    x = ins[0]
    axis = norm_axis(attrs.get("axis", 1), x.ndim)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@register("Transpose")
def transpose(xp, ins, attrs):
    x = ins[0]
    perm = attrs.get("perm")
    perm = tuple(reversed(range(x.ndim))) if perm is None else ints(perm)
    return [xp.transpose(x, perm)]


@register("Squeeze", static=(1,))
def squeeze(xp, ins, attrs):
    x = ins[0]
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("axes")
    if axes is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    axes = tuple(norm_axis(a, x.ndim) for a in ints(axes))
    return [x.reshape([d for i, d in enumerate(x.shape) if i not in axes])]


@register("Unsqueeze", static=(1,))
def unsqueeze(xp, ins, attrs):
    x = ins[0]
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else attrs["axes"]
    r = x.ndim + len(ints(axes))
    axes = sorted(norm_axis(a, r) for a in ints(axes))
    shp = list(x.shape)
    for a in axes:
        shp.insert(a, 1)
    return [x.reshape(shp)]


@register("Concat")
def concat(xp, ins, attrs):
    ins = [x for x in ins if x is not None]
    axis = norm_axis(attrs["axis"], ins[0].ndim)
    if xp is not np:
        import jax.numpy as jnp

        dt = jnp.result_type(*ins)
        ins = [jnp.asarray(x, dt) for x in ins]
    return [xp.concatenate(ins, axis=axis)]


@register("Gather", static=(1,))
def gather(xp, ins, attrs):
    x, idx = ins
    axis = norm_axis(attrs.get("axis", 0), x.ndim)
    idx = np.asarray(idx)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [xp.take(x, idx, axis=axis)]


@register("Slice", static=(1, 2, 3, 4))
def slice_(xp, ins, attrs):
    x = ins[0]
    if len(ins) > 1:
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else tuple(range(len(starts)))
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else (1,) * len(starts)
    else:  # opset < 10: attributes
        starts, ends = ints(attrs["starts"]), ints(attrs["ends"])
        axes = ints(attrs["axes"]) if attrs.get("axes") is not None else tuple(range(len(starts)))
        steps = (1,) * len(starts)
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = norm_axis(a, x.ndim)
        dim = x.shape[a]
        # clamp like ONNX (handles INT64_MAX / INT64_MIN sentinels)
        s = max(-dim - 1, min(dim + 1, s))
        e = max(-dim - 1, min(dim + 1, e))
        s, e, _ = slice(s, e, st).indices(dim)
        if st < 0 and e < 0:
            e = None
        sl[a] = slice(s, e, st)
    return [x[tuple(sl)]]


@register("ConstantOfShape", static=(0,))
def constant_of_shape(xp, ins, attrs):
    v = attrs.get("value")
    v = np.zeros(1, np.float32) if v is None else np.asarray(v).reshape(-1)
    return [np.full(ints(ins[0]), v[0], dtype=v.dtype)]


@register("Pad", static=(1, 2, 3))
def pad(xp, ins, attrs):
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        pads = ints(ins[1])
        cval = ins[2] if len(ins) > 2 and ins[2] is not None else 0
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else tuple(range(x.ndim))
    else:
        pads = ints(attrs["pads"])
        cval = attrs.get("value", 0.0)
        axes = tuple(range(x.ndim))
    n = len(axes)
    pw = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        pw[norm_axis(a, x.ndim)] = (pads[i], pads[i + n])
    mode = attrs.get("mode", "constant")
    # negative pads crop
    crop = [slice(max(0, -b), x.shape[i] - max(0, -e)) for i, (b, e) in enumerate(pw)]
    x = x[tuple(crop)]
    pw = [(max(0, b), max(0, e)) for b, e in pw]
    if mode == "constant":
        cval = np.asarray(cval).reshape(-1)[0] if np.size(cval) else 0
        return [xp.pad(x, pw, mode="constant", constant_values=np.asarray(cval, dtype=x.dtype))]
    return [xp.pad(x, pw, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


@register("Expand", static=(1,))
def expand(xp, ins, attrs):
    x, shp = ins[0], ints(ins[1])
    out = np.broadcast_shapes(tuple(x.shape), tuple(shp))
    return [xp.broadcast_to(x, out)]


@register("Tile", static=(1,))
def tile(xp, ins, attrs):
    return [xp.tile(ins[0], ints(ins[1]))]


@register("Split", static=(1,))
def split(xp, ins, attrs):
    x = ins[0]
    axis = norm_axis(attrs.get("axis", 0), x.ndim)
    sizes = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("split")
    n_out = attrs["_n_outputs"]
    if sizes is None:
        dim = x.shape[axis]
        nos = attrs.get("num_outputs") or n_out
        each = -(-dim // nos)
        sizes = [min(each, dim - i * each) for i in range(nos)]
    sizes = ints(sizes)
    idx = np.cumsum(sizes)[:-1]
    return list(xp.split(x, idx, axis=axis))


@register("Range", static=(0, 1, 2))
def range_(xp, ins, attrs):
    s, lim, d = (np.asarray(v).reshape(()) for v in ins)
    return [np.arange(s, lim, d, dtype=np.result_type(s, lim, d))]


@register("EyeLike")
def eyelike(xp, ins, attrs):
    x = ins[0]
    dt = onnx_dtype_to_np(attrs["dtype"]) if attrs.get("dtype") is not None else x.dtype
    if xp is not np:  # JAX without x64 (documented): 64-bit types compute in 32 bits
        dt = {np.dtype(np.float64): np.float32, np.dtype(np.int64): np.int32}.get(np.dtype(dt), dt)
    return [xp.eye(x.shape[0], x.shape[1], k=attrs.get("k", 0), dtype=dt)]
