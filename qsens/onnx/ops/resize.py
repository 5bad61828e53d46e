"""Resize (opset 11-19) and Upsample: separable interpolation with static coefficient tables.

Resize is separable, so each resized axis is a 1-D map ``out[o] = sum_j coeff[o, j] * in[idx[o, j]]`` whose
indices and coefficients depend only on static shapes and attributes.  They are computed on the host (numpy,
float64, the formulas of ``onnx.reference.ops.op_resize``); the traced model then does a gather (nearest) or a
dense (out, in) interpolation matrix product (linear / cubic / antialias).

Coordinate transformation modes: half_pixel, half_pixel_symmetric, pytorch_half_pixel, align_corners,
asymmetric, tf_crop_and_resize (with extrapolation_value).  Nearest modes: round_prefer_floor,
round_prefer_ceil, floor, ceil.  keep_aspect_ratio_policy, axes (opset 18+), antialias, exclude_outside.
"""

from __future__ import annotations

import math

import numpy as np

from ..registry import register
from ._util import norm_axis


def source_coords(mode: str, out_len: int, in_len: int, scale: float, roi=None):
    """Output index -> source coordinate (float64) and the extrapolation mask (tf_crop_and_resize)."""
    y = np.arange(out_len, dtype=np.float64)
    out_w = scale * in_len
    extra = None
    if mode == "align_corners":
        x = np.zeros(out_len) if out_w == 1 else y * (in_len - 1) / (out_w - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        r0, r1 = float(roi[0]), float(roi[1])
        if out_w == 1:
            x = np.full(out_len, (r1 - r0) * (in_len - 1) / 2)
        else:
            x = y * (r1 - r0) * (in_len - 1) / (out_w - 1)
        x = x + r0 * (in_len - 1)
        extra = (x < 0) | (x > in_len - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_len, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"Resize: unsupported coordinate_transformation_mode {mode!r}")
    return x, extra


def _nearest_index(x, nearest_mode: str):
    if nearest_mode == "round_prefer_floor":
        i = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        i = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        i = np.floor(x)
    elif nearest_mode == "ceil":
        i = np.ceil(x)
    else:
        raise ValueError(f"Resize: unsupported nearest_mode {nearest_mode!r}")
    return i.astype(np.int64)


def _cubic(r, A):
    return np.array([
        ((A * (r + 1) - 5 * A) * (r + 1) + 8 * A) * (r + 1) - 4 * A,
        ((A + 2) * r - (A + 3)) * r * r + 1,
        ((A + 2) * (1 - r) - (A + 3)) * (1 - r) * (1 - r) + 1,
        ((A * (2 - r) - 5 * A) * (2 - r) + 8 * A) * (2 - r) - 4 * A,
    ])


def _cubic_aa(r, scale, A):
    scale = min(scale, 1.0)
    i0 = int(np.floor(-2 / scale) + 1)
    t = np.abs(scale * (np.arange(i0, 2 - i0) - r))
    c = np.where(t <= 1, (A + 2) * t**3 - (A + 3) * t**2 + 1, np.where(t < 2, A * t**3 - 5 * A * t**2 + 8 * A * t - 4 * A, 0.0))
    return c / c.sum()


def _linear_aa(r, scale):
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    c = np.clip(1 - np.abs((np.arange(start, start + 2 - 2 * start) - r) * scale), 0, 1)
    return c / c.sum()


def interp_matrix(x, in_len: int, mode: str, scale: float, *, cubic_a=-0.75, antialias=False, exclude_outside=False):
    """(out, in) float64 interpolation matrix for linear / cubic sampling at source coordinates ``x``."""
    xi = np.floor(x).astype(np.int64)
    ratio = np.where(x == xi, 1.0, x - xi)
    if mode == "linear":
        coeffs = [(_linear_aa(r, scale) if antialias else np.array([1 - r, r])) for r in ratio]
    else:
        coeffs = [(_cubic_aa(r, scale, cubic_a) if antialias else _cubic(r, cubic_a)) for r in ratio]
    coeffs = np.stack(coeffs) if len(coeffs) else np.zeros((0, 2))
    n = coeffs.shape[1]
    pad = int(np.ceil(n / 2))
    xp_ = x + pad
    p = np.floor(xp_).astype(np.int64)
    frac = xp_ - p
    if n % 2 == 0:
        off = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        off = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = (p + off)[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        coeffs = np.where((idx < 0) | (idx >= in_len), 0.0, coeffs)
        s = coeffs.sum(axis=-1, keepdims=True)
        coeffs = coeffs / np.where(s == 0, 1.0, s)
    idx = np.clip(idx, 0, in_len - 1)
    m = np.zeros((len(x), in_len))
    for j in range(n):
        np.add.at(m, (np.arange(len(x)), idx[:, j]), coeffs[:, j])
    return m


def resize_plan(shape, *, scales=None, sizes=None, axes=None, policy="stretch"):
    """Per-axis (scale, out_len) of a Resize, from static scales or sizes."""
    r = len(shape)
    axes = list(range(r)) if axes is None else [norm_axis(int(a), r) for a in axes]
    sc = [1.0] * r
    out = list(shape)
    if sizes is not None:
        sz = [int(v) for v in np.asarray(sizes).reshape(-1)]
        f = {a: sz[i] / shape[a] for i, a in enumerate(axes)}
        if policy in ("not_larger", "not_smaller"):
            s = min(f.values()) if policy == "not_larger" else max(f.values())
            for a in axes:
                sc[a] = s
                out[a] = int(s * shape[a] + 0.5)
        else:
            for i, a in enumerate(axes):
                sc[a], out[a] = f[a], sz[i]
    else:
        sv = [float(v) for v in np.asarray(scales, np.float64).reshape(-1)]
        for i, a in enumerate(axes):
            sc[a] = sv[i]
            out[a] = int(math.floor(sv[i] * shape[a]))
    return axes, sc, out


def resize_nd(xp, x, *, axes, scales, out_shape, mode, coord, nearest_mode="round_prefer_floor", roi=None,
              cubic_a=-0.75, antialias=False, exclude_outside=False, extrapolation=0.0):
    r = x.ndim
    y = x
    for a in axes:
        n_in, n_out, s = x.shape[a], out_shape[a], scales[a]
        rr = None if roi is None else (roi[a], roi[a + r])
        if n_out == n_in and math.isclose(s, 1.0) and (rr is None or (rr[0] == 0 and rr[1] == 1)):
            continue
        if n_out == 0:
            shp = list(y.shape)
            shp[a] = 0
            y = xp.zeros(shp, y.dtype)
            continue
        src, extra = source_coords(coord, n_out, n_in, s, rr)
        if mode == "nearest":
            idx = np.clip(_nearest_index(src, nearest_mode), 0, n_in - 1)
            y = xp.take(y, idx, axis=a)
        else:
            m = interp_matrix(src, n_in, mode, s, cubic_a=cubic_a, antialias=antialias,
                              exclude_outside=exclude_outside).astype(np.float32 if xp is not np else np.float64)
            yf = y if xp is not np else y.astype(np.float64)
            if xp is np:
                z = np.tensordot(yf, m, axes=([a], [1]))
            else:
                from jax import lax

                z = xp.tensordot(yf, m.astype(y.dtype), axes=([a], [1]), precision=lax.Precision.HIGHEST)
            y = xp.moveaxis(z, -1, a).astype(x.dtype)
        if extra is not None and extra.any():
            shp = [1] * r
            shp[a] = n_out
            y = xp.where(extra.reshape(shp), np.asarray(extrapolation, x.dtype), y)
    return y


@register("Resize", static=(1, 2, 3), since=11)
def resize(xp, ins, attrs):
    x = ins[0]
    roi = ins[1] if len(ins) > 1 and ins[1] is not None and np.size(ins[1]) else None
    scales = ins[2] if len(ins) > 2 and ins[2] is not None and np.size(ins[2]) else None
    sizes = ins[3] if len(ins) > 3 and ins[3] is not None and np.size(ins[3]) else None
    ax = attrs.get("axes")
    ax = None if ax is None or len(ax) == 0 else [int(a) for a in ax]
    axes, sc, out = resize_plan(x.shape, scales=scales, sizes=sizes, axes=ax,
                                policy=attrs.get("keep_aspect_ratio_policy", "stretch"))
    coord = attrs.get("coordinate_transformation_mode", "half_pixel")
    if roi is not None:
        roi = [float(v) for v in np.asarray(roi, np.float64).reshape(-1)]
        if ax is not None:  # roi given for `axes` only
            full = [0.0] * x.ndim + [1.0] * x.ndim
            for i, a in enumerate(axes):
                full[a], full[a + x.ndim] = roi[i], roi[len(axes) + i]
            roi = full
    elif coord == "tf_crop_and_resize":
        roi = [0.0] * x.ndim + [1.0] * x.ndim
    if coord != "tf_crop_and_resize":
        roi = None
    return [resize_nd(
        xp, x, axes=axes, scales=sc, out_shape=out, mode=attrs.get("mode", "nearest"), coord=coord,
        nearest_mode=attrs.get("nearest_mode", "round_prefer_floor"), roi=roi,
        cubic_a=attrs.get("cubic_coeff_a", -0.75), antialias=bool(attrs.get("antialias", 0)),
        exclude_outside=bool(attrs.get("exclude_outside", 0)), extrapolation=attrs.get("extrapolation_value", 0.0),
    )]


@register("Upsample", static=(1,), since=7)
def upsample(xp, ins, attrs):
    """Upsample (deprecated at opset 10): asymmetric coordinates; nearest = floor (integer repeat)."""
    x = ins[0]
    scales = ins[1] if len(ins) > 1 and ins[1] is not None else attrs["scales"]
    axes, sc, out = resize_plan(x.shape, scales=scales)
    mode = attrs.get("mode", "nearest")
    mode = "linear" if mode in ("linear", "bilinear") else mode
    return [resize_nd(xp, x, axes=axes, scales=sc, out_shape=out, mode=mode, coord="asymmetric", nearest_mode="floor")]
