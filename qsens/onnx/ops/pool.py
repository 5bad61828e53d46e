"""Pooling: MaxPool (ceil_mode), AveragePool (count_include_pad), GlobalAverage/MaxPool."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..registry import register
from ._util import ints
from .conv import conv_pads


def pool_geometry(attrs, in_sp):
    k = ints(attrs["kernel_shape"])
    n = len(k)
    strides = ints(attrs["strides"]) if attrs.get("strides") is not None else (1,) * n
    dil = ints(attrs["dilations"]) if attrs.get("dilations") is not None else (1,) * n
    pads = list(conv_pads(attrs, in_sp, k, strides, dil))
    out = []
    for i in range(n):
        eff = (k[i] - 1) * dil[i] + 1
        span = in_sp[i] + pads[i][0] + pads[i][1] - eff
        if attrs.get("ceil_mode", 0):
            o = -(-span // strides[i]) + 1
            # the last window must start inside the input or the begin padding
            if (o - 1) * strides[i] >= in_sp[i] + pads[i][0]:
                o -= 1
        else:
            o = span // strides[i] + 1
        extra = max(0, (o - 1) * strides[i] + eff - (in_sp[i] + pads[i][0] + pads[i][1]))
        pads[i] = (pads[i][0], pads[i][1] + extra)
        out.append(o)
    return k, strides, dil, tuple(pads), tuple(out)


@register("MaxPool", numpy_ok=False)
def maxpool(xp, ins, attrs):
    x = ins[0]
    k, s, d, pads, _ = pool_geometry(attrs, x.shape[2:])
    init = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    y = lax.reduce_window(
        x, jnp.asarray(init, x.dtype), lax.max, (1, 1) + k, (1, 1) + s, ((0, 0), (0, 0)) + pads,
        window_dilation=(1, 1) + d,
    )
    return [y]


@register("AveragePool", numpy_ok=False)
def avgpool(xp, ins, attrs):
    x = ins[0]
    k, s, d, pads, _ = pool_geometry(attrs, x.shape[2:])
    z = jnp.zeros((), x.dtype)
    win = ((1, 1) + k, (1, 1) + s, ((0, 0), (0, 0)) + pads)
    total = lax.reduce_window(x, z, lax.add, *win, window_dilation=(1, 1) + d)
    if attrs.get("count_include_pad", 0):
        # count the explicit pads but not the ceil_mode extension
        orig = conv_pads(attrs, x.shape[2:], k, s, d)
        ones = jnp.ones(tuple(n + b + e for n, (b, e) in zip(x.shape[2:], orig)), x.dtype)
        pads2 = tuple((0, p[1] - o[1]) for p, o in zip(pads, orig))
        cnt = lax.reduce_window(ones, z, lax.add, k, s, pads2, window_dilation=d)
    else:
        cnt = lax.reduce_window(jnp.ones(x.shape[2:], x.dtype), z, lax.add, k, s, pads, window_dilation=d)
    return [total / cnt]


@register("GlobalAveragePool")
def global_avgpool(xp, ins, attrs):
    x = ins[0]
    return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)]


@register("GlobalMaxPool")
def global_maxpool(xp, ins, attrs):
    x = ins[0]
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


