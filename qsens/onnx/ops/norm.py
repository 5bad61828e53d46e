"""Normalizations: LRN, LayerNormalization, InstanceNormalization."""

from __future__ import annotations

import numpy as np

from ..registry import register
from ._util import norm_axis


@register("LRN")
def lrn(xp, ins, attrs):
    x = ins[0]
    size = int(attrs["size"])
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    c = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = x * x
    padded = xp.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    acc = padded[:, 0:c]
    for i in range(1, size):
        acc = acc + padded[:, i : i + c]
    base = np.asarray(bias, x.dtype) + np.asarray(alpha / size, x.dtype) * acc
    return [(x / base ** np.asarray(beta, x.dtype)).astype(x.dtype)]


@register("LayerNormalization", since=17)
def layer_norm(xp, ins, attrs):
    x, scale = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    axis = norm_axis(attrs.get("axis", -1), x.ndim)
    eps = attrs.get("epsilon", 1e-5)
    axes = tuple(range(axis, x.ndim))
    xf = x.astype(np.float32) if attrs.get("stash_type", 1) == 1 else x
    mean = xf.mean(axis=axes, keepdims=True)
    d = xf - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    inv = 1 / xp.sqrt(var + np.asarray(eps, xf.dtype))
    y = (d * inv).astype(x.dtype) * scale
    if b is not None:
        y = y + b
    n_out = attrs.get("_n_outputs", 1)
    return [y, mean, inv][: max(n_out, 1)]


@register("InstanceNormalization")
def instance_norm(xp, ins, attrs):
    x, scale, b = ins
    eps = attrs.get("epsilon", 1e-5)
    axes = tuple(range(2, x.ndim))
    shp = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    y = d / xp.sqrt(var + np.asarray(eps, x.dtype)) * scale.reshape(shp) + b.reshape(shp)
    return [y.astype(x.dtype)]
