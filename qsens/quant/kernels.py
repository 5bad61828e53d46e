"""BM1684 INT8 kernels on integer codes (the ``pymlir`` tpu-dialect interpreter semantics).

``int8_op(op, weights, q_inputs, qp) -> q_out``: ``q_inputs`` are int32 arrays holding int8/uint8 codes (NCHW for
conv/pool/scale), ``qp`` comes from :func:`qsens.quant.qparams.qparams_for`; the result is int32 codes in
``[qp["lo"], qp["hi"]]``.  ``weights`` is accepted for a uniform signature and ignored (everything
weight-derived, e.g. int8 filters, is in ``qp`` because it depends on the thresholds).  All kernels are jit-able
with ``qp`` traced; ``op`` is static.

Exact integer accumulation (Conv / MatMul): with ``K`` = reduction length (``Cin/g*kh*kw`` or ``K``), codes
``|q| <= 255`` and ``|w8| <= 128``:

* ``K*255*128 < 2^24`` (``K <= 514``): one float32 conv/dot (``Precision.HIGHEST``): every partial sum is an
  integer below 2^24, hence exact in any summation order;
* ``K*16*128 < 2^24`` (``K <= 8191``): the input is split into nibbles ``q = 16*hi + lo`` (``|hi|, lo <= 15``),
  two float32 convs, combined in int32 (exact);
* otherwise, on CPU, an int32 conv/dot with ``preferred_element_type=int32``;
* on GPU/TPU (cuDNN has no int32 convolution: XLA answers UNIMPLEMENTED, seen on an H200), both operands are
  split into nibbles (``w = 16*wh + wl``, ``|wh| <= 8``, ``wl <= 15``): four float32 contractions whose partial
  sums stay below ``K*15*15 < 2^24``, combined in int32 -- exact for ``K*255*128 < 2^31`` (``K <= 65793``,
  beyond which int32 itself would overflow).

Those bounds are static (``K`` alone).  Conv and MatMul also pass their weights' per-output axes: when a layer's
own int8 weights keep ``255 * sum |w8|`` of every output below 2^24 (true of typical layers far beyond K = 514),
one float32 contraction is taken at run time instead (``lax.cond``; see ``_exact``).

``ACCUMULATE`` (module global: "auto" | "f32" | "split" | "split4" | "int32") forces a path (tests); a forced path
is taken whatever the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..errors import QsensError
from .chip import BM1684, ChipSpec
from .numerics import (
    Round,
    avgpool_multiplier_shift,
    qmax_of,
    qrange,
    round_to_int,
    rshift_round,
    x64,
)
from .qparams import LUT_OPS, op_kind

I32, F32 = jnp.int32, jnp.float32
ACCUMULATE = "auto"
_F32_EXACT = 2**24
_F32_FIT = (_F32_EXACT - 1) // 255  # the largest per-output sum |w8| for which float32 is exact (see _exact)


def _acc_mode(K: int, backend: str | None = None, op_name: str = "") -> str:
    if ACCUMULATE != "auto":
        return ACCUMULATE
    if K * 255 * 128 < _F32_EXACT:
        return "f32"
    if K * 16 * 128 < _F32_EXACT:
        return "split"
    if (backend or jax.default_backend()) == "cpu":
        return "int32"
    if K * 255 * 128 < 2**31:
        return "split4"
    raise QsensError(f"op '{op_name}': an INT8 contraction of length K={K} cannot be accumulated exactly in int32 "
                     f"(K*255*128 >= 2^31); keep it in float (qtable) or split the layer")


def _exact(fn, x, w, K: int, op_name: str = "", per_output: tuple[int, ...] | None = None):
    """``fn(x, w)`` (a linear integer contraction) computed exactly; int32 result.

    ``per_output``: the axes of ``w`` one output sums over (OIHW Conv: ``(1, 2, 3)``; a (K, N) dot: ``(0,)``).
    Given, a contraction whose static mode is not plain float32 takes one float32 contraction at run time when
    this layer's weights allow it: with ``|x| <= 255``, every partial sum of an output is at most
    ``255 * sum |w|`` of that output, so ``max_o sum |w| <= (2^24 - 1) // 255`` keeps every partial sum an
    integer below 2^24, exact in any order.  Typical int8 weights are far below the ``K * 128`` the static
    bound assumes (Lite0's K = 672..1280 layers), so their two- or four-part contractions become one."""
    mode = _acc_mode(K, op_name=op_name)
    if mode != "f32" and ACCUMULATE == "auto" and per_output is not None:
        return lax.cond(fits_float32(w, per_output), lambda: _exact_mode("f32", fn, x, w),
                        lambda: _exact_mode(mode, fn, x, w))
    return _exact_mode(mode, fn, x, w)


def fits_float32(w, per_output: tuple[int, ...]):
    """True (a traced bool) when one float32 contraction of codes ``|x| <= 255`` with the integer weights ``w``
    is exact: ``max_o sum |w| <= (2^24 - 1) // 255`` over the axes ``per_output`` (see ``_exact``)."""
    return jnp.max(jnp.sum(jnp.abs(w.astype(I32)), axis=per_output)) <= _F32_FIT


def _exact_mode(mode: str, fn, x, w):
    if mode == "int32":
        return fn(x.astype(I32), w.astype(I32), I32)
    wf = w.astype(F32)
    if mode == "f32":
        return fn(x.astype(F32), wf, F32).astype(I32)
    hi = jnp.right_shift(x, 4)  # arithmetic shift: x = 16*hi + lo, lo in [0, 15]
    lo = jnp.bitwise_and(x, 15)
    if mode == "split4":
        wi = w.astype(I32)
        wh, wl = jnp.right_shift(wi, 4).astype(F32), jnp.bitwise_and(wi, 15).astype(F32)
        hf, lf = hi.astype(F32), lo.astype(F32)

        def part(a, b):
            return fn(a, b, F32).astype(I32)

        return 256 * part(hf, wh) + 16 * (part(hf, wl) + part(lf, wh)) + part(lf, wl)
    return 16 * fn(hi.astype(F32), wf, F32).astype(I32) + fn(lo.astype(F32), wf, F32).astype(I32)


def _conv_as_dots(x, w, strides, pads, dil, g):
    """NCHW conv as a sum over the kh*kw taps of channel contractions (GEMMs), float32, Precision.HIGHEST.

    For the exact integer paths off CPU: cuDNN may pick Winograd/FFT algorithms, whose transforms round, and
    integer codes then come back off by one (seen on an H200: 3x3 conv, K=720).  GEMMs multiply and add the
    integers themselves, so every partial sum stays an exact integer (the bounds of ``_acc_mode``)."""
    from ..onnx.layout import shifted_taps, tree_sum

    n = x.shape[0]
    o, cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    taps, ho, wo = shifted_taps(x, (2, 3), ((pt, pb), (pl, pr)), (kh, kw), strides, dil)
    terms = []
    for k, xs in enumerate(taps):
        wt = w[:, :, k // kw, k % kw].reshape(g, o // g, cg)
        terms.append(jnp.einsum("ngchw,goc->ngohw", xs.reshape(n, g, cg, ho, wo), wt, precision=lax.Precision.HIGHEST,
                                preferred_element_type=F32).reshape(n, o, ho, wo))
    return tree_sum(terms)


def _conv_fn(op, nhwc: bool = False):
    """``fn(x, w, dt)``: the conv of ``op`` on NCHW operands, or NHWC ones with ``nhwc`` (the same numbers)."""
    strides = tuple(op.attr("strides", (1, 1)))
    pads = tuple(op.attr("pads", (0, 0, 0, 0)))
    dil = tuple(op.attr("dilations", (1, 1)))
    g = int(op.attr("group", 1))

    def fn(x, w, dt):
        if nhwc:
            if dt == F32 and jax.default_backend() == "cpu":
                from ..onnx.layout import conv2d_nhwc

                return conv2d_nhwc(x, w, None, strides=strides, pads=pads, dilations=dil, group=g)
            from ..onnx.layout import TO_NCHW, TO_NHWC

            return jnp.transpose(nchw(jnp.transpose(x, TO_NCHW), w, dt), TO_NHWC)
        return nchw(x, w, dt)

    def nchw(x, w, dt):
        if dt == F32 and jax.default_backend() == "cpu" and x.ndim == 4:
            # the float fast path (depthwise as shifted multiply-adds, 1x1 as a channel-last dot): every partial
            # sum is an integer below 2^24 here (see _acc_mode), so any summation order is exact
            from ..onnx.layout import TO_NCHW, TO_NHWC, conv2d_nhwc

            y = conv2d_nhwc(jnp.transpose(x, TO_NHWC), w, None, strides=strides, pads=pads, dilations=dil, group=g)
            return jnp.transpose(y, TO_NCHW)
        if dt == F32 and x.ndim == 4:
            return _conv_as_dots(x, w, strides, pads, dil, g)
        return lax.conv_general_dilated(
            x,
            w,
            window_strides=strides,
            padding=((pads[0], pads[2]), (pads[1], pads[3])),
            rhs_dilation=dil,
            feature_group_count=g,
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            precision=lax.Precision.HIGHEST,
            preferred_element_type=dt,
        )

    return fn


def _deconv_fn(op, x_shape):
    """The ConvTranspose of ``op`` on integer-valued operands (any summation order is exact within the bounds of
    ``_acc_mode``: every product and partial sum is an integer)."""
    from ..onnx.ops.extra import convtranspose_as_conv

    attrs = dict(op.attrs)

    def fn(x, w, dt):
        wt, padding, s, d, g, spec = convtranspose_as_conv(w, attrs, x_shape)
        return lax.conv_general_dilated(x, wt, (1,) * (len(x_shape) - 2), padding, lhs_dilation=s, rhs_dilation=d,
                                        dimension_numbers=spec, feature_group_count=g,
                                        precision=lax.Precision.HIGHEST, preferred_element_type=dt)

    return fn


def _dot_fn(x, w, dt):
    return lax.dot_general(
        x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST, preferred_element_type=dt
    )


def _finish(y, op, qp, relu: bool | None = None):
    if relu is None:
        relu = bool(op.attr("do_relu", False))
    if relu:
        y = jnp.maximum(y, 0)
    return jnp.clip(y, qp["lo"], qp["hi"]).astype(I32)


def _pool_pads(op):
    pads = tuple(op.attr("pads", (0, 0, 0, 0)))
    return ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3]))


def int8_op(op, weights, q_inputs: Sequence, qp: dict, chip: ChipSpec = BM1684, nhwc: bool = False):
    """Run ``op`` in BM1684 INT8 on integer codes.  See the module docstring.  ``nhwc``: a Conv's codes are
    channel-last (input and output; the search's executables, which hold activations NHWC on CPU): the same
    integers, without the two transposes around the kernel.  Only a Conv takes it."""
    del weights, chip
    kind = op_kind(op)
    if nhwc and kind != "Conv":
        raise ValueError(f"op {op.name!r}: only a Conv runs on NHWC codes, not a {kind}")
    xs = [jnp.asarray(q).astype(I32) for q in q_inputs]
    hu = Round.HALF_UP
    shp = (1, 1, 1, -1) if nhwc else (1, -1, 1, 1)  # a Conv's per-output-channel parameters
    if kind == "Conv" and "b32" in qp:  # BM1684X: per-channel multiplier + rshift (Tpu/Interfaces/Common/Conv2D.cpp)
        K = int(np.prod(qp["w8"].shape[1:]))
        acc = _exact(_conv_fn(op, nhwc), xs[0], qp["w8"], K, op.name, (1, 2, 3))
        y = requant_multiplier(acc, qp["b32"].reshape(shp), qp["m"].reshape(shp), qp["r"].reshape(shp))
        return _finish(y, op, qp)
    if kind == "MatMul" and "b32" in qp:  # BM1684X: per-tensor multiplier + rshift (Tpu/Interfaces/Common/MatMul.cpp)
        w8 = qp["w8"]
        acc = _exact(_dot_fn, xs[0], w8, int(w8.shape[0]), op.name, (0,))
        if op.attr("do_relu", False):  # the interpreter's matmul applies the ReLU before the requant (m > 0: same)
            acc = jnp.maximum(acc + qp["b32"], 0) - qp["b32"]
        return _finish(requant_multiplier(acc, qp["b32"], qp["m"], qp["r"]), op, qp)
    if kind == "Conv":
        x = xs[0]
        w8 = qp["w8"]
        K = int(np.prod(w8.shape[1:]))
        acc = _exact(_conv_fn(op, nhwc), x, w8, K, op.name, (1, 2, 3)) + qp["b16"].reshape(shp)
        return _finish(rshift_round(acc, qp["r"], hu), op, qp)
    if kind == "Deconv" and "b32" in qp:
        # BM1684X (TPU-MLIR 1.23, gen_const's relu42_Relu): an int32 tpu.Deconv (per-output-channel int8 weights, int32
        # bias, the fused ReLU on the int32 result), then tpu.RequantIntAxis: RSR(acc * m_c, r_c, HALF_AWAY_FROM_ZERO)
        x = xs[0]
        w8 = qp["w8"]
        K = int(w8.shape[0] // int(op.attr("group", 1)) * np.prod(w8.shape[2:]))
        shp = (1, -1, 1, 1)
        acc = _exact(_deconv_fn(op, x.shape), x, w8, K, op.name) + qp["b32"].reshape(shp)
        if op.attr("do_relu", False):
            acc = jnp.maximum(acc, 0)
        y = requant_multiplier(acc, 0, qp["m"].reshape(shp), qp["r"].reshape(shp), Round.HALF_AWAY_FROM_ZERO)
        return _finish(y, op, qp)
    if kind == "Deconv":
        x = xs[0]
        w8 = qp["w8"]
        K = int(w8.shape[0] // int(op.attr("group", 1)) * np.prod(w8.shape[2:]))
        acc = _exact(_deconv_fn(op, x.shape), x, w8, K, op.name) + qp["b16"].reshape(1, -1, 1, 1)
        # the interpreter (Tpu/Interfaces/Common/Deconv.cpp) saturates with to_int8 even for a uint8 output: a Deconv
        # with a fused ReLU never exceeds 127 (checked against TPU-MLIR 1.23, gen_const's relu42_Relu)
        return _finish(rshift_round(acc, qp["r"], hu), op, {**qp, "hi": jnp.minimum(qp["hi"], 127)})
    if kind == "AddConst":
        return _finish(rshift_round(xs[0] * qp["m"] + qp["c"], qp["r"], hu), op, qp)
    if kind == "SubConst":
        t = qp["c"] - xs[0] * qp["m"] if op.attr("is_reverse", False) else xs[0] * qp["m"] - qp["c"]
        if op.attr("do_relu", False):
            t = jnp.maximum(t, 0)
        return _finish(rshift_round(t, qp["r"], hu), op, qp)
    if kind == "MulConst":
        return _finish(rshift_round(xs[0] * qp["m"], qp["r"], hu), op, qp)
    if kind == "Upsample":
        y = jnp.repeat(jnp.repeat(xs[0], int(op.attr("scale_h")), axis=2), int(op.attr("scale_w")), axis=3)
        return _finish(y, op, qp)
    if kind == "MatMul":
        x = xs[0]
        w8 = qp["w8"]
        if op.attr("transB", False) and w8.shape[0] != x.shape[-1]:
            w8 = w8.T
        acc = _exact(_dot_fn, x, w8, int(w8.shape[0]), op.name, (0,)) + qp["b16"]
        return _finish(rshift_round(acc, qp["r"], hu), op, qp)
    if kind == "Scale" and "b32" in qp:  # BM1684X: a depthwise 1x1 conv, per-channel multiplier + rshift
        x = xs[0]
        shp = (1, -1) + (1,) * (x.ndim - 2)
        acc = x * qp["w8"].reshape(shp)
        y = requant_multiplier(acc, qp["b32"].reshape(shp), qp["m"].reshape(shp), qp["r"].reshape(shp))
        return _finish(y, op, qp)
    if kind == "Scale":
        x = xs[0]
        shp = (1, -1) + (1,) * (x.ndim - 2)
        res = x * qp["a8"].reshape(shp) + qp["b16"].reshape(shp)
        res = jnp.clip(res, qp["mid_lo"], qp["mid_hi"])
        return _finish(rshift_round(res, qp["r"].reshape(shp), Round.DOWN), op, qp)
    if kind == "Add":
        y = 0
        for k, x in enumerate(xs):
            y = y + rshift_round(x * qp["m"][k], qp["r"][k], hu)
        return _finish(y, op, qp)
    if kind == "Mul":
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        return _finish(rshift_round(y * qp["m"], qp["r"], hu), op, qp)
    if kind == "Concat":
        axis = int(op.attr("axis", 1))
        parts = [
            jnp.clip(rshift_round(x * qp["m"][k], qp["r"][k], hu), qp["lo"], qp["hi"]) for k, x in enumerate(xs)
        ]
        return _finish(jnp.concatenate(parts, axis=axis), op, qp)
    if kind == "Relu":
        return _finish(rshift_round(jnp.maximum(xs[0], 0) * qp["m"], qp["r"], hu), op, qp, relu=True)
    if kind in ("LeakyRelu", "PRelu"):
        x = xs[0]
        m, r = qp["m"], qp["r"]
        if m.shape[0] > 1:  # per channel (PRelu slope)
            shp = (1, -1) + (1,) * (x.ndim - 2)
            m, r = m.reshape(shp), r.reshape(shp)
        else:
            m, r = m[0], r[0]
        return _finish(jnp.where(x >= 0, x, rshift_round(x * m, r, hu)), op, qp)
    if kind == "MaxPool":
        x = xs[0]
        kh, kw = op.attr("kernel_shape")
        sh, sw = op.attr("strides", (1, 1))
        y = lax.reduce_window(x, jnp.int32(-(2**31)), lax.max, (1, 1, kh, kw), (1, 1, sh, sw), _pool_pads(op))
        return _finish(y, op, qp)
    if kind in ("AvgPool", "GlobalAvgPool"):
        return _avgpool(op, xs[0], qp)
    if kind in LUT_OPS:
        return _finish(jnp.take(qp["lut"], xs[0] - qp["lut_lo"], mode="clip"), op, qp)
    if kind == "Softmax":
        return _finish(_softmax_table(op, xs[0], qp), op, qp, relu=False)
    raise ValueError(f"op {op.name!r}: type {op.type!r} has no BM1684 INT8 kernel")


def _softmax_table(op, x, qp):
    """BM1684X INT8 Softmax (TPU-MLIR 1.23, Tpu/Interfaces/Common/Softmax.cpp ``inference``; PNet's
    ``softmax_Softmax`` bit-exact, tests/test_bm1684x_oracle.py): per row along ``axis``, ``t = table[to_uint8(max - q)]``,
    ``sum`` accumulated in float32 in channel order, ``p = float(t / (sum * s_out))``, the uint8 code
    ``(int)(p + 0.5)``.  The interpreter divides in double (``s_out`` is a double there); float32 here, equal on the
    fixture (1,444 of 1,444 codes)."""
    ax = int(op.attr("axis", -1)) % x.ndim
    mx = jnp.max(x, axis=ax, keepdims=True)
    t = jnp.take(qp["table"], jnp.clip(mx - x, 0, 255))
    tt = jnp.moveaxis(t, ax, 0)
    total = jax.lax.scan(lambda c, v: (c + v, None), jnp.zeros_like(tt[0]), tt)[0]  # sequential, channel order
    p = t / (jnp.expand_dims(total, ax) * qp["s_out"])
    return jnp.floor(p + jnp.float32(0.5)).astype(I32)


def _avgpool(op, x, qp):
    if op_kind(op) == "GlobalAvgPool":
        kh, kw = x.shape[2], x.shape[3]
        sh, sw = 1, 1
        pads = ((0, 0),) * 4
        include_pad = True
    else:
        kh, kw = op.attr("kernel_shape")
        sh, sw = op.attr("strides", (1, 1))
        pads = _pool_pads(op)
        include_pad = bool(op.attr("count_include_pad", False))
    k = kh * kw
    if "m" in qp:  # BM1684X: (multiplier, rshift) from the thresholds (qparams, TopToTpu/BM1684X/AvgPool.cpp)
        M, E = qp["m"], qp["r"]
    else:
        M, E = avgpool_multiplier_shift(k) if k <= 225 else (1, 0)
    win, st = (1, 1, kh, kw), (1, 1, sh, sw)
    s = lax.reduce_window(x, jnp.int32(0), lax.add, win, st, pads)
    if include_pad or all(p == (0, 0) for p in pads):
        total = s  # RHAZ(float32(float32(sum/k)*k)) == sum for these magnitudes
    else:
        cnt = _valid_counts(x.shape[2:], (kh, kw), (sh, sw), pads[2:])
        # interpreter: avg = float32(sum / count) (valid elements), then sum' = RHAZ(avg * kh * kw)
        avg = s.astype(F32) / jnp.asarray(cnt, F32)
        total = round_to_int(avg * jnp.float32(k), Round.HALF_AWAY_FROM_ZERO).astype(I32)
    return _finish(rshift_round(total * M, E, Round.HALF_UP), op, qp)


@x64
def requant_multiplier(acc, b32, m, r, mode: Round = Round.HALF_UP):
    """BM1684X requantization of an int32 accumulator: ``applyMultiplierAndRShift(acc + b32, m, r, MultiplierShift,
    HALF_UP)`` = ``RightShiftRound((acc + b32) * m, r, HALF_UP)`` in int64 (``m`` is an int32 multiplier up to 2^31, the
    product needs 64 bits; int64 is staged into the caller's jaxpr like the float64 parameter maths), saturated to
    int32 (the caller clamps to the output range).  TPU-MLIR's interpreter adds the bias to a float32 convolution
    result, exact while |acc + b32| < 2^24; qsens adds in integers, as the chip does."""
    i64 = jnp.int64
    v = (jnp.asarray(acc).astype(i64) + jnp.asarray(b32).astype(i64)) * jnp.asarray(m).astype(i64)
    y = rshift_round(v, jnp.asarray(r).astype(i64), mode)
    return jnp.clip(y, -(2**31), 2**31 - 1).astype(I32)


def _valid_counts(hw, k, st, pads):
    """Static numpy count of non-padding elements per pooling window, shape (1, 1, OH, OW)."""
    ones = np.pad(np.ones(hw, np.int64), pads)
    oh = (ones.shape[0] - k[0]) // st[0] + 1
    ow = (ones.shape[1] - k[1]) // st[1] + 1
    cnt = np.array(
        [[ones[i * st[0] : i * st[0] + k[0], j * st[1] : j * st[1] + k[1]].sum() for j in range(ow)] for i in range(oh)]
    )
    return cnt.reshape(1, 1, oh, ow)


# ------------------------------------------------------------------------------------------------ casts
@x64
def _inv_scale_f32(th, signed: bool):
    s = jnp.asarray(th).astype(jnp.float64) / float(qmax_of(signed))
    return (1.0 / s).astype(F32)


@x64
def _scale_f32(th, signed: bool):
    return (jnp.asarray(th).astype(jnp.float64) / float(qmax_of(signed))).astype(F32)


@x64
def pad_value_code(value: float, th, signed: bool):
    """A constant Pad's fill value in INT8 (TopToTpu/BM1684/Pad.cpp: ``std::round(val / s_in)``, a float64 division
    rounded half away from zero), saturated; int32 code."""
    lo, hi = qrange(signed)
    s = jnp.asarray(th).astype(jnp.float64) / float(qmax_of(signed))
    q = round_to_int(jnp.float64(value) / s, Round.HALF_AWAY_FROM_ZERO)
    return jnp.clip(q, lo, hi).astype(I32)


def quantize(x, th, signed: bool):
    """FP32 -> INT8 cast: ``saturate(RHAZ(x * float32(1/s)))``, ``s = th/127`` (signed) or ``th/255``; int32 codes."""
    lo, hi = qrange(signed)
    v = jnp.asarray(x).astype(F32) * _inv_scale_f32(th, signed)
    return jnp.clip(round_to_int(v, Round.HALF_AWAY_FROM_ZERO), lo, hi).astype(I32)


def quantize_from(x, th, signed: bool, float_type: str = "F32"):
    """The cast of a ``float_type`` tensor to INT8.  F32: :func:`quantize`.  F16 / BF16 (TPU-MLIR 1.23's BM1684X
    ``tpu.Cast`` F16 -> INT8, checked code for code on PNet's mixed model, tests/fixtures/tpu_mlir/mtcnn_pnet/
    mix_bm1684x): the product runs in the float type, ``saturate(RHAZ(fp(x * fp(float32(1/s)))))``, ``fp`` = round to
    nearest even in the float type."""
    if float_type == "F32":
        return quantize(x, th, signed)
    from ..onnx.convert import round_to_float_type

    lo, hi = qrange(signed)
    inv = round_to_float_type(_inv_scale_f32(th, signed), float_type)
    v = round_to_float_type(jnp.asarray(x).astype(F32) * inv, float_type)
    return jnp.clip(round_to_int(v, Round.HALF_AWAY_FROM_ZERO), lo, hi).astype(I32)


def dequantize(q, th, signed: bool):
    """INT8 -> FP32: ``q * float32(s)``."""
    return jnp.asarray(q).astype(F32) * _scale_f32(th, signed)


int8_op_jit = jax.jit(int8_op, static_argnums=(0,))
