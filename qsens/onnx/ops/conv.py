"""Conv, Gemm, MatMul, BatchNormalization.

Speed on CPU (measured, README "Performance"): XLA-CPU's grouped/depthwise convolution is ~10x slower than
the same conv written as k*k shifted multiply-adds, and a 1x1 convolution ~4x slower than the same product as
a dot.  ``conv2d`` therefore picks, per layer and from static shapes only:

* depthwise (group == C_in == C_out) -> k*k shifted multiply-adds (CPU),
* 1x1, stride 1, no padding, group 1   -> ``einsum`` (a dot),
* anything else                        -> ``lax.conv_general_dilated``.

On GPU/TPU the native convolution is kept (``jax.default_backend()`` at trace time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..layout import shifted_taps, tree_sum
from ..registry import register
from ._util import ints


def conv_pads(attrs, in_hw, k_hw, strides, dilations) -> tuple[tuple[int, int], ...]:
    """ONNX pads / auto_pad -> ((begin, end), ...) per spatial dim."""
    n = len(in_hw)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(n):
            o = -(-in_hw[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + (k_hw[i] - 1) * dilations[i] + 1 - in_hw[i])
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return tuple(out)
    if auto_pad == "VALID":
        return tuple((0, 0) for _ in range(n))
    pads = attrs.get("pads")
    if pads is None:
        return tuple((0, 0) for _ in range(n))
    pads = ints(pads)
    return tuple((pads[i], pads[i + n]) for i in range(n))


def _use_native() -> bool:
    return jax.default_backend() != "cpu"


def conv2d(x, w, b, *, strides, pads, dilations, group):
    """NCHW conv with static attributes; chooses the fastest formulation for the backend."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (pt, pb), (pl, pr) = pads
    sh, sw = strides
    dh, dw = dilations
    native = _use_native()
    if not native and group == c == o and cg == 1:
        # depthwise: k*k shifted multiply-adds
        taps, _, _ = shifted_taps(x, (2, 3), ((pt, pb), (pl, pr)), (kh, kw), (sh, sw), (dh, dw))
        terms = [t * w[:, 0, k // kw, k % kw][None, :, None, None] for k, t in enumerate(taps)]
        y = tree_sum(terms)  # the NHWC path's order (qsens/onnx/layout.py)
    elif not native and kh == kw == 1 and group == 1 and sh == sw == 1 and not (pt or pb or pl or pr):
        y = jnp.einsum("oc,nchw->nohw", w[:, :, 0, 0], x, preferred_element_type=x.dtype)
    else:
        y = lax.conv_general_dilated(
            x,
            w,
            window_strides=(sh, sw),
            padding=((pt, pb), (pl, pr)),
            rhs_dilation=(dh, dw),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=group,
            precision=lax.Precision.HIGHEST,
        )
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def conv_attrs(attrs, x_shape, w_shape):
    nsp = len(w_shape) - 2
    k = ints(attrs.get("kernel_shape") or w_shape[2:])
    strides = ints(attrs["strides"]) if attrs.get("strides") is not None else (1,) * nsp
    dil = ints(attrs["dilations"]) if attrs.get("dilations") is not None else (1,) * nsp
    pads = conv_pads(attrs, tuple(x_shape[2:]), k, strides, dil)
    return k, strides, pads, dil, int(attrs.get("group", 1))


@register("Conv", numpy_ok=False)
def conv(xp, ins, attrs):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    k, strides, pads, dil, group = conv_attrs(attrs, x.shape, w.shape)
    if x.ndim == 4:
        return [conv2d(x, w, b, strides=strides, pads=pads, dilations=dil, group=group)]
    nsp = x.ndim - 2
    spec = {1: ("NCH", "OIH", "NCH"), 3: ("NCDHW", "OIDHW", "NCDHW")}[nsp]
    y = lax.conv_general_dilated(
        x, w, strides, pads, rhs_dilation=dil, dimension_numbers=spec, feature_group_count=group,
        precision=lax.Precision.HIGHEST,
    )
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return [y]


@register("Gemm", numpy_ok=False)
def gemm(xp, ins, attrs):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    y = jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = y * jnp.asarray(alpha, y.dtype)
    if c is not None:
        y = y + (c if beta == 1.0 else c * jnp.asarray(beta, y.dtype))
    return [y]


@register("MatMul", numpy_ok=False)
def matmul(xp, ins, attrs):
    return [jnp.matmul(ins[0], ins[1], precision=lax.Precision.HIGHEST)]


@register("BatchNormalization")
def batchnorm(xp, ins, attrs):
    x, scale, bias, mean, var = ins[:5]
    eps = attrs.get("epsilon", 1e-5)
    shp = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / xp.sqrt(var + np.asarray(eps, var.dtype))
    y = (x - mean.reshape(shp)) * inv.reshape(shp) + bias.reshape(shp)
    return [y.astype(x.dtype)]
