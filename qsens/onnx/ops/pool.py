"""Pooling: MaxPool (ceil_mode), AveragePool (count_include_pad), GlobalAverage/MaxPool."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
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
        x, np.asarray(init, x.dtype), lax.max, (1, 1) + k, (1, 1) + s, ((0, 0), (0, 0)) + pads,
        window_dilation=(1, 1) + d,
    )
    return [y]


def window_sum_rowmajor(x, k, s, pads, d, axes):
    """Sum over pooling windows in TPU-MLIR's order: one float add per tap, taps row-major (kh outer, kw inner),
    padding as zeros (x + 0 = x, so the partial sums equal a loop over the valid taps only).  TPU-MLIR's F32
    Pool2D (the interpreter of the lowered model) sums this way; XLA's ``reduce_window`` order differs in the
    last bit, which moved INT8 codes behind F32 AvgPools (gen_pool: the Cast of an F32 AvgPool feeding INT8
    convolutions, checked bit-exact against TPU-MLIR 1.23's mixed model)."""
    widths = [(0, 0)] * x.ndim
    for ax, p in zip(axes, pads):
        widths[ax] = p
    xp = jnp.pad(x, widths)
    out_sz = [(xp.shape[ax] - ((kk - 1) * dd + 1)) // ss + 1 for ax, kk, ss, dd in zip(axes, k, s, d)]
    total = None
    for taps in np.ndindex(*k):
        start = [0] * x.ndim
        limit = list(xp.shape)
        strides = [1] * x.ndim
        for ax, t, ss, dd, n in zip(axes, taps, s, d, out_sz):
            start[ax] = t * dd
            limit[ax] = t * dd + (n - 1) * ss + 1
            strides[ax] = ss
        tap = lax.slice(xp, start, limit, strides)
        total = tap if total is None else total + tap
    return total


@register("AveragePool", numpy_ok=False)
def avgpool(xp, ins, attrs):
    x = ins[0]
    k, s, d, pads, _ = pool_geometry(attrs, x.shape[2:])
    z = jnp.zeros((), x.dtype)
    total = window_sum_rowmajor(x, k, s, pads, d, (2, 3)[: len(k)] if len(k) <= 2 else tuple(range(2, 2 + len(k))))
    if attrs.get("count_include_pad", 0):
        # count the explicit pads but not the ceil_mode extension
        orig = conv_pads(attrs, x.shape[2:], k, s, d)
        ones = jnp.ones(tuple(n + b + e for n, (b, e) in zip(x.shape[2:], orig)), x.dtype)
        pads2 = tuple((0, p[1] - o[1]) for p, o in zip(pads, orig))
        cnt = lax.reduce_window(ones, z, lax.add, k, s, pads2, window_dilation=d)
    else:
        cnt = lax.reduce_window(jnp.ones(x.shape[2:], x.dtype), z, lax.add, k, s, pads, window_dilation=d)
    return [exact_divide(total, cnt)]


def exact_divide(total, cnt):
    """``total / cnt`` rounded once (IEEE float32 division), as TPU-MLIR's F32 pooling divides.  XLA-CPU turns a
    division by a constant or a broadcast operand into a multiplication by its reciprocal (off by one ulp for ~10 %
    of values); a full-shape divisor behind an optimization barrier keeps the true division."""
    return total / lax.optimization_barrier(jnp.broadcast_to(cnt, total.shape))


@register("GlobalAveragePool")
def global_avgpool(xp, ins, attrs):
    x = ins[0]
    return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)]


@register("GlobalMaxPool")
def global_maxpool(xp, ins, attrs):
    x = ins[0]
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


