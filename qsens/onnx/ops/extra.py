"""Activations (Erf, Gelu, Elu, Selu, Softplus, Softsign), CastLike, Size, ArgMax/ArgMin,
DepthToSpace/SpaceToDepth and ConvTranspose."""

from __future__ import annotations

import math

import numpy as np

from ..registry import register
from ._util import ints, norm_axis


def _erf(xp, x):
    if xp is np:
        return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x
    import jax

    return jax.scipy.special.erf(x)


@register("Erf")
def erf(xp, ins, attrs):
    return [_erf(xp, ins[0])]


@register("Gelu", since=20)
def gelu(xp, ins, attrs):
    x = ins[0]
    if attrs.get("approximate", "none") == "tanh":
        c = np.asarray(math.sqrt(2.0 / math.pi), x.dtype)
        return [(0.5 * x * (1 + xp.tanh(c * (x + np.asarray(0.044715, x.dtype) * x * x * x)))).astype(x.dtype)]
    return [(0.5 * x * (1 + _erf(xp, x / np.asarray(math.sqrt(2.0), x.dtype)))).astype(x.dtype)]


@register("Elu")
def elu(xp, ins, attrs):
    x = ins[0]
    alpha = np.asarray(attrs.get("alpha", 1.0), x.dtype)
    return [xp.where(x > 0, x, alpha * (xp.exp(xp.minimum(x, 0)) - 1)).astype(x.dtype)]


@register("Selu")
def selu(xp, ins, attrs):
    x = ins[0]
    alpha = np.asarray(attrs.get("alpha", 1.67326319217681884765625), x.dtype)
    gamma = np.asarray(attrs.get("gamma", 1.05070102214813232421875), x.dtype)
    return [(gamma * xp.where(x > 0, x, alpha * (xp.exp(xp.minimum(x, 0)) - 1))).astype(x.dtype)]


@register("Softplus")
def softplus(xp, ins, attrs):
    x = ins[0]
    # log(1 + exp(x)), stable for large |x|
    return [(xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))).astype(x.dtype)]


@register("Softsign")
def softsign(xp, ins, attrs):
    x = ins[0]
    return [x / (1 + xp.abs(x))]


@register("CastLike")
def cast_like(xp, ins, attrs):
    x, like = ins[0], ins[1]
    return [x.astype(like.dtype)]


@register("Size")
def size(xp, ins, attrs):
    return [np.asarray(int(np.prod(ins[0].shape)), np.int64)]


def _arg(op_type, pick):
    @register(op_type)
    def impl(xp, ins, attrs, _pick=pick):
        x = ins[0]
        axis = norm_axis(attrs.get("axis", 0), x.ndim)
        keep = bool(attrs.get("keepdims", 1))
        if attrs.get("select_last_index", 0):
            flipped = xp.flip(x, axis=axis)
            idx = x.shape[axis] - 1 - _pick(xp, flipped, axis)
        else:
            idx = _pick(xp, x, axis)
        if keep:
            idx = xp.expand_dims(idx, axis)
        return [idx.astype(np.int64) if xp is np else idx.astype(np.int32)]

    return impl


_arg("ArgMax", lambda xp, x, a: xp.argmax(x, axis=a))
_arg("ArgMin", lambda xp, x, a: xp.argmin(x, axis=a))


@register("DepthToSpace")
def depth_to_space(xp, ins, attrs):
    x = ins[0]
    b = int(attrs["blocksize"])
    n, c, h, w = x.shape
    if attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:  # CRD
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@register("SpaceToDepth")
def space_to_depth(xp, ins, attrs):
    x = ins[0]
    b = int(attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    if attrs.get("mode", "DCR") == "DCR":
        y = y.transpose(0, 3, 5, 1, 2, 4)
    else:  # CRD
        y = y.transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


def convtranspose_geometry(attrs, in_sp, k):
    """(strides, dilations, (pad_begin, pad_end) per dim, output_padding) with output_shape / auto_pad resolved."""
    n = len(in_sp)
    s = ints(attrs["strides"]) if attrs.get("strides") is not None else (1,) * n
    d = ints(attrs["dilations"]) if attrs.get("dilations") is not None else (1,) * n
    op = ints(attrs["output_padding"]) if attrs.get("output_padding") is not None else (0,) * n
    out_shape = attrs.get("output_shape")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if out_shape is not None and len(ints(out_shape)):
        out_shape = ints(out_shape)[-n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = tuple(in_sp[i] * s[i] for i in range(n))
    else:
        out_shape = None
    if out_shape is not None:
        pads = []
        for i in range(n):
            total = s[i] * (in_sp[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - out_shape[i]
            if auto_pad == "SAME_UPPER":
                pads.append((total // 2, total - total // 2))
            else:
                pads.append((total - total // 2, total // 2))
    elif auto_pad == "VALID" or attrs.get("pads") is None:
        pads = [(0, 0)] * n
    else:
        p = ints(attrs["pads"])
        pads = [(p[i], p[i + n]) for i in range(n)]
    return s, d, tuple(pads), op


def convtranspose_as_conv(w, attrs, x_shape):
    """A ConvTranspose as a dilated-input conv: ``(w', padding, lhs_dilation, rhs_dilation, groups, dimension
    numbers)`` for ``lax.conv_general_dilated`` (also the INT8 Deconv kernel's geometry)."""
    import jax.numpy as jnp

    nsp = len(x_shape) - 2
    k = ints(attrs["kernel_shape"]) if attrs.get("kernel_shape") is not None else tuple(w.shape[2:])
    s, d, pads, op = convtranspose_geometry(attrs, tuple(x_shape[2:]), k)
    g = int(attrs.get("group", 1))
    c, mg = w.shape[0], w.shape[1]
    # (C, M/g, k...) -> (M, C/g, k...), flipped spatially
    wt = w.reshape((g, c // g, mg) + tuple(w.shape[2:]))
    wt = jnp.swapaxes(wt, 1, 2).reshape((g * mg, c // g) + tuple(w.shape[2:]))
    wt = jnp.flip(wt, axis=tuple(range(2, 2 + nsp)))
    padding = [((k[i] - 1) * d[i] - pads[i][0], (k[i] - 1) * d[i] - pads[i][1] + op[i]) for i in range(nsp)]
    spec = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW"), 3: ("NCDHW", "OIDHW", "NCDHW")}[nsp]
    return wt, padding, s, d, g, spec


@register("ConvTranspose", numpy_ok=False)
def conv_transpose(xp, ins, attrs):
    from jax import lax

    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    nsp = x.ndim - 2
    wt, padding, s, d, g, spec = convtranspose_as_conv(w, attrs, x.shape)
    y = lax.conv_general_dilated(
        x, wt, (1,) * nsp, padding, lhs_dilation=s, rhs_dilation=d, dimension_numbers=spec,
        feature_group_count=g, precision=lax.Precision.HIGHEST,
    )
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return [y]
