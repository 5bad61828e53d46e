"""Threshold-dependent INT8 parameters of one op (BM1684 lowering), as a pytree of dynamic jnp arrays.

``qparams_for(op, weights, th_in, th_out, signed_in, signed_out)`` reproduces the TPU-MLIR BM1684
``LoweringINT8`` of ``op``: shifts, multipliers, int8 weights, int16 biases, LUTs.  Thresholds may be traced
(jit arguments): changing them never retraces.  Signedness is static (Python bools).

Precision policy (see docs/bm1684.md): every value TPU-MLIR computes in ``double`` (``s = th/127``,
``s_in/s_out``, ``2^r*s_in/s_out``, ...) is computed in float64 under ``jax.enable_x64`` (staged into the caller's
jaxpr even when the caller is not in x64 mode), with the C++ evaluation order; every value C++ stores in a
``float`` is rounded to float32 at the same point; weights are quantized as ``RHAZ(float32(W * float32(scale)))``.
Thresholds are taken at the precision they arrive in (a float32 threshold is widened exactly).

Every result dict holds:

* ``lo``, ``hi``: int32 output code range (int8 or uint8 by ``signed_out``);
* ``fallback``: bool scalar, True when BM1684 would lower this op to F32 for these thresholds (Conv
  ``rshift < 0``, Add negative multiplier, Mul multiplier outside [0, 127], kernel area > 225, stride > 15); the
  caller selects the float path with ``jnp.where(qp["fallback"], float_path, int8_path)``.  The int8 kernel
  still runs (with clamped parameters) when ``fallback`` is True, its result is just meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .chip import BM1684, ChipSpec
from .numerics import (
    Round,
    avgpool_multiplier_shift,
    backend,
    cal_right_shift_num,
    cal_right_shift_num_use_cblas,
    get_scale_and_shift,
    get_scale_and_shift_positive,
    multiplier_i8_from_qscale,
    qmax_of,
    qrange,
    round_to_int,
    rshift_from_qscale,
    x64,
)

F32, F64, I32 = np.float32, np.float64, np.int32

OP_ALIASES = {
    "ReLU": "Relu",
    "LeakyReLU": "LeakyRelu",
    "PReLU": "PRelu",
    "FC": "MatMul",
    "Gemm": "MatMul",
    "Sigmoid": "Sigmoid",
    "Silu": "SiLU",
    "Swish": "SiLU",
    "GlobalAveragePool": "GlobalAvgPool",
    "AveragePool": "AvgPool",
}
LUT_OPS = ("Sigmoid", "SiLU", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Exp")
SUPPORTED = (
    "Conv",
    "MatMul",
    "Add",
    "Scale",
    "Mul",
    "MaxPool",
    "AvgPool",
    "GlobalAvgPool",
    "Concat",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "AddConst",
    "SubConst",
    "MulConst",
    "Upsample",
    "Deconv",
) + LUT_OPS

#: INT8 kernels only some chips have (``ChipSpec.int8_kinds`` lists them): BM1684X's table Softmax (docs/bm1684x.md)
CHIP_ONLY = ("Softmax",)

#: Top ops BM1684 lowers to F32 in an INT8 model, with the reason (the TPU-MLIR source of the rule is in
#: docs/bm1684.md, "Ops that stay F32").
F32_ON_BM1684 = {
    "Interp": "Interp (Resize other than nearest with integer scales) is lowered to F32 on BM1684",
    "Clip": "Clip with a non-zero lower bound is lowered to F32 on BM1684 (MaxConst + MinConst)",
    "Div": "Div of two activations is lowered to F32 on BM1684",
    "Reduce": "Reduce (other than a mean/max over H, W, which is a pool) is lowered to F32 on BM1684",
}


def op_kind(op) -> str:
    return OP_ALIASES.get(op.type, op.type)


@x64
def scale_of(th, signed: bool):
    """``s = th/127`` (signed) or ``th/255`` (unsigned), float64 (MOD ``getScale``)."""
    xp = backend()
    return xp.asarray(th).astype(F64) / float(qmax_of(signed))


def _tuple(x, n):
    if isinstance(x, bool | np.bool_):
        return (bool(x),) * n
    x = tuple(bool(v) for v in x)
    if len(x) != n:
        raise ValueError(f"expected {n} signedness flags, got {len(x)}")
    return x


def _f32(x):
    return backend().asarray(x).astype(F32)


def _rhaz_f32(x):
    """RHAZ of a float32 value (returned as float64 for exact range checks)."""
    return round_to_int(_f32(x), Round.HALF_AWAY_FROM_ZERO).astype(F64)


def _to_int(x, lo, hi):
    return backend().clip(_rhaz_f32(x), lo, hi).astype(I32)


def _pow2(r):
    xp = backend()
    return xp.ldexp(xp.ones((), F64), xp.asarray(r).astype(I32))  # exact (exp2 is not)


def _bias_quant(b, s_out, r):
    """``quantizeToInt16(b, scale=float(1.0*2^r/s_out))``: RHAZ(float32(b*scale)) -> (int16 codes, overflow)."""
    xp = backend()  # noqa: F841
    bs = _f32(_pow2(r) / s_out)
    q = _rhaz_f32(_f32(b) * bs)
    over = (q > 32767) | (q < -32768)
    return xp.clip(q, -32768, 32767).astype(I32), over


def _bias_backoff(b, s_out, r0, tol, axis_len: int | None):
    """The ``while ratio > tol and r > 0: r -= 1`` loop, vectorised over all r in 0..31.

    ``axis_len=None``: one ratio over the whole bias (Conv/MatMul, ``r0`` scalar);
    otherwise per channel (Scale, ``len == 1`` so any overflow backs off; ``r0`` shape (C,)).
    """
    xp = backend()
    cand = xp.arange(32, dtype=I32)
    b = _f32(b)
    if axis_len is None:
        _, over = _bias_quant(b[None, :], s_out, cand[:, None])  # (32, O)
        n_over = xp.sum(over, axis=1).astype(F32)
        ratio = n_over / xp.float32(b.size)
        ok = (ratio.astype(F64) <= tol) | (cand == 0)
        best = xp.max(xp.where(ok & (cand <= r0), cand, 0))
        return xp.where(r0 > 0, best, r0).astype(I32)
    _, over = _bias_quant(b[None, :], s_out, cand[:, None])  # (32, C)
    ok = (~over) | (cand[:, None] == 0)  # ratio is 0 or 1 for len == 1
    best = xp.max(xp.where(ok & (cand[:, None] <= r0[None, :]), cand[:, None], 0), axis=0)
    return xp.where(r0 > 0, best, r0).astype(I32)


def _out_range(signed_out):
    lo, hi = qrange(signed_out)
    xp = backend()
    return {"lo": xp.asarray(lo, I32), "hi": xp.asarray(hi, I32)}


def static_fallback(op, in_shapes: Sequence[tuple[int, ...]] | None = None, chip: ChipSpec = BM1684) -> str | None:
    """Why ``chip`` (BM1684 by default) lowers ``op`` to F32 regardless of thresholds (None when it does not)."""
    kind = op_kind(op)
    if chip.int8_kinds is not None and kind not in chip.int8_kinds:
        return f"{op.type}: qsens does not model TPU-MLIR's {chip.name} INT8 lowering of it (kept F32)"
    if kind in F32_ON_BM1684:
        return F32_ON_BM1684[kind]
    if kind not in SUPPORTED and not (kind in CHIP_ONLY and chip.int8_kinds is not None and kind in chip.int8_kinds):
        return f"{op.type} has no BM1684 INT8 kernel here"
    if kind in ("Conv", "Deconv"):
        if any(s > chip.max_conv_stride for s in op.attr("strides", (1, 1))):
            return "conv stride > 15"
        if len(op.attr("kernel_shape", (1, 1))) != 2:
            return "only 2-D conv is lowered to INT8"
    if kind in ("AvgPool", "MaxPool"):
        k = int(np.prod(op.attr("kernel_shape", (1, 1))))
        if k > chip.max_pool_kernel:
            return f"pool kernel area {k} > {chip.max_pool_kernel}"
    if kind == "GlobalAvgPool" and in_shapes is not None:
        k = int(np.prod(in_shapes[0][2:]))
        if k > chip.max_pool_kernel:
            return f"pool kernel area {k} > {chip.max_pool_kernel}"
    return None


@x64
def qparams_for(
    op,
    weights: dict,
    th_in: Sequence,
    th_out,
    signed_in,
    signed_out: bool,
    chip: ChipSpec = BM1684,
    in_shapes: Sequence[tuple[int, ...]] | None = None,
    scales: tuple[Sequence[float], float] | None = None,
) -> dict:
    """INT8 parameters of ``op`` for input thresholds ``th_in`` (one per activation input) and ``th_out``.
    ``scales=(s_in, s_out)`` gives the scales themselves instead (asymmetric INT8: ``(max - min) / 255``,
    :mod:`qsens.quant.asym`); the thresholds then only count the inputs.

    ``weights``: role -> float32 array (Conv/MatMul ``filter``/``bias``, Scale ``scale``/``bias``, PRelu ``slope``).
    ``signed_in``: a bool or one bool per input; ``signed_out``: bool.  ``in_shapes`` (optional, static) lets
    GlobalAvgPool detect the kernel-area fallback.  Returns a dict of jnp arrays (see module docstring).
    """
    xp = backend()
    kind = op_kind(op)
    if kind not in SUPPORTED and kind not in CHIP_ONLY:
        raise ValueError(f"op {op.name!r}: type {op.type!r} has no BM1684 INT8 kernel")
    th_in = tuple(th_in) if isinstance(th_in, list | tuple) else (th_in,)
    sig_in = _tuple(signed_in, len(th_in))
    if scales is None:
        s_in = [scale_of(t, s) for t, s in zip(th_in, sig_in)]
        s_out = scale_of(th_out, signed_out)
    else:
        s_in = [xp.asarray(float(v), F64) for v in scales[0]]
        s_out = xp.asarray(float(scales[1]), F64)
    qp = _out_range(signed_out)
    static_fb = static_fallback(op, in_shapes, chip) is not None
    fb = xp.asarray(static_fb)

    if chip.per_channel_conv and kind in ("Conv", "MatMul"):
        qp.update(_multiplier_requant(op, kind, weights, s_in[0], s_out))
    elif chip.per_channel_conv and kind == "Deconv":
        # BM1684X: the Conv rules per *output* channel on the filter TPU-MLIR stores as (Cout, Cin/g, kh, kw) (weights,
        # int32 bias, multipliers and shifts equal to its lowered npz on gen_const's relu42), back in ONNX's layout
        w = _f32(weights["filter"])
        g = int(op.attr("group", 1))
        cin, cog = w.shape[0], w.shape[1]
        wc = xp.reshape(xp.transpose(xp.reshape(w, (g, cin // g, cog) + tuple(w.shape[2:])), (0, 2, 1, 3, 4)),
                        (g * cog, cin // g) + tuple(w.shape[2:]))
        dw = {"filter": wc}
        if weights.get("bias") is not None:
            dw["bias"] = weights["bias"]
        qp.update(_multiplier_requant(op, "Conv", dw, s_in[0], s_out))
        w8 = xp.reshape(qp["w8"], (g, cog, cin // g) + tuple(w.shape[2:]))
        qp["w8"] = xp.reshape(xp.transpose(w8, (0, 2, 1, 3, 4)), tuple(w.shape))
    elif kind in ("Conv", "MatMul", "Deconv"):
        # Deconv: TopToTpu/BM1684/Deconv.cpp lowers it as Conv (per-layer shift, int16 bias, multiplier 1)
        # q_filter / q_bias: a Conv/MatMul a MulConst was merged into (its float32 weights times the constant)
        w = _f32(weights["q_filter"] if "q_filter" in weights else weights["filter"])
        if kind == "MatMul" and op.attr("transB", False):
            w = w.T
        r0 = cal_right_shift_num(xp.max(xp.abs(w)), s_in[0], s_out)
        if kind in ("Conv", "Deconv"):
            fb = fb | (r0 < 0)
        r = xp.maximum(r0, 0)
        b = weights.get("q_bias") if "q_filter" in weights else weights.get("bias")
        if b is not None:
            r = _bias_backoff(xp.ravel(_f32(b)), s_out, r, chip.bias_overflow_tolerance, None)
            qp["b16"], _ = _bias_quant(_f32(b), s_out, r)
        else:
            n_out = {"Conv": w.shape[0], "Deconv": w.shape[1] * int(op.attr("group", 1))}.get(kind, w.shape[-1])
            qp["b16"] = xp.zeros((n_out,), I32)
        scale = _f32((_pow2(r) * s_in[0]) / s_out)
        qp["w8"] = _to_int(_f32(w * scale), -128, 127)
        qp["r"] = r.astype(I32)
        qp["r0"] = r0.astype(I32)  # before the bias back-off (diagnostics)
    elif kind == "Scale" and chip.per_channel_conv:
        # BM1684X lowers a Scale as a depthwise 1x1 Conv2D (TPU-MLIR 1.23, gen_const's batchnormalization16: its
        # per-channel multipliers and every code equal): the Conv rules on filter = a (C,1,1,1), bias = b
        a = xp.ravel(_f32(weights.get("q_scale", weights.get("scale"))))
        b = weights.get("q_bias", weights.get("bias"))
        c = a.shape[0]
        dw = {"filter": xp.reshape(a, (c, 1, 1, 1))}
        if b is not None:
            dw["bias"] = xp.ravel(_f32(b))
        qp.update(_multiplier_requant(op, "Conv", dw, s_in[0], s_out))
    elif kind in ("AddConst", "SubConst") and chip.per_channel_conv:
        # BM1684X (TPU-MLIR 1.23, gen_const's sub5_Sub and mbv3s's /Sub_output_0_Sub AddConst: const_val, multiplier,
        # rshift and every code equal): (m, r) = get_scale_and_shift(s_in / s_out, 8), the constant RHAZ(c / s_out) *
        # 2^r; the interpreter's RSR(q*m + c', r, HALF_UP) (AddConst), RSR(c' - q*m, r, HALF_UP) (SubConst, is_reverse)
        # / RSR(q*m - c', r, HALF_UP), as BM1684's kernels
        m, r = get_scale_and_shift(s_in[0] / s_out, 8)
        qp["m"], qp["r"] = m.astype(I32), r.astype(I32)
        c = round_to_int(xp.asarray(float(op.attr("const_val")), F64) / s_out, Round.HALF_AWAY_FROM_ZERO)
        qp["c"] = (c * _pow2(r)).astype(I32)
    elif kind == "Scale":
        # per-channel (a, b): q_scale / q_bias of an Add/Mul/BatchNormalization the canonicalizer made a Scale
        a = xp.ravel(_f32(weights.get("q_scale", weights.get("scale"))))
        b = weights.get("q_bias", weights.get("bias"))
        b = xp.ravel(_f32(b)) if b is not None else xp.zeros_like(a)
        r0 = cal_right_shift_num_use_cblas(a, s_in[0], s_out)
        r = _bias_backoff(b, s_out, r0, chip.bias_overflow_tolerance, a.shape[0])
        b16, _ = _bias_quant(b, s_out, r)
        half = xp.left_shift(1, xp.clip(r - 1, 0, 30)).astype(I32)
        shifted = b16 + half
        shifted = ((shifted + 32768) & 0xFFFF) - 32768  # int16 wrap of (int16_t)(b16 + (1 << (r-1)))
        b16 = xp.where(r > 0, xp.maximum(shifted, b16), b16)
        qp["a8"] = _to_int(a * _f32((_pow2(r) * s_in[0]) / s_out), -128, 127)
        qp["b16"] = b16.astype(I32)
        qp["r"] = r.astype(I32)
        mid_lo, mid_hi = qrange(signed_out, 16)
        qp["mid_lo"], qp["mid_hi"] = xp.asarray(mid_lo, I32), xp.asarray(mid_hi, I32)
    elif kind == "Add" and chip.add_requant == "positive":
        # TopToTpu/BM1684X/Add.cpp: get_scale_and_shift_positive(float(coeff_k * (s_k / s_out)), 8) per input (n in
        # 0..30, |m| < 127); no F32 fallback; the interpreter is BM1684's (Tpu/Interfaces/Common/Add.cpp)
        coeff = op.attr("coeff", None) or (1.0,) * len(th_in)
        ms, rs = [], []
        for k in range(len(th_in)):
            m, r = get_scale_and_shift_positive(float(coeff[k]) * (s_in[k] / s_out), 8)
            ms.append(m)
            rs.append(r)
        qp["m"] = xp.stack(ms).astype(I32)
        qp["r"] = xp.stack(rs).astype(I32)
    elif kind in ("AvgPool", "GlobalAvgPool") and chip.avgpool_requant == "scale_and_shift":
        # TopToTpu/BM1684X/AvgPool.cpp (symmetric, 2-D): scale = s_in / (s_out * kh * kw) (double, C++ order:
        # (s_out * kh) * kw), get_scale_and_shift(float(scale), 8) (n in -32..30: a negative r is a left shift)
        kh, kw = _pool_kernel(op, kind, in_shapes)
        m, r = get_scale_and_shift(s_in[0] / ((s_out * float(kh)) * float(kw)), 8)
        qp["m"], qp["r"] = m.astype(I32), r.astype(I32)
    elif kind == "Add":
        coeff = op.attr("coeff", None) or (1.0,) * len(th_in)
        ms, rs = [], []
        for k in range(len(th_in)):
            c = xp.asarray(float(coeff[k]))
            r = xp.maximum(cal_right_shift_num_use_cblas(c, s_in[k], s_out), 0)
            m = _to_int(_f32(c) * _f32((_pow2(r) * s_in[k]) / s_out), -128, 127)
            fb = fb | (m < 0)
            ms.append(m)
            rs.append(r)
        qp["m"] = xp.stack(ms).astype(I32)
        qp["r"] = xp.stack(rs).astype(I32)
    elif kind in ("AddConst", "SubConst"):
        # TopToTpu/BM1684/{AddConst,SubConst}.cpp: the input's (multiplier, rshift) as in Add (coefficient 1; SubConst
        # keeps a negative r, a left shift), the constant quantizeToInt16(c, 2^r/s_out) (RHAZ, int16 saturation);
        # interpreter RSR(q*m + c', r, HALF_UP) / RSR(c' - q*m, r, HALF_UP) (Tpu/Interfaces/Common/{AddConst,SubConst})
        r = cal_right_shift_num_use_cblas(xp.asarray(1.0), s_in[0], s_out)
        if kind == "AddConst":
            r = xp.maximum(r, 0)
        qp["m"] = _to_int(_f32((_pow2(r) * s_in[0]) / s_out), -128, 127)
        qp["r"] = r.astype(I32)
        qp["c"], _ = _bias_quant(xp.asarray(float(op.attr("const_val")), F64), s_out, r)
    elif kind == "MulConst":
        # TopToTpu/BM1684/MulConst.cpp: scale = const*s_in/s_out, r = calRightShiftNumUseCblas(scale), m = to_int8(
        # scale*2^r); interpreter RSR(q*m, r, HALF_UP)
        c = float(op.attr("const_val"))
        r = xp.maximum(cal_right_shift_num_use_cblas(xp.asarray(c), s_in[0], s_out), 0)
        qp["m"] = _to_int(_f32(_f32(c) * _f32((_pow2(r) * s_in[0]) / s_out)), -128, 127)
        qp["r"] = r.astype(I32)
    elif kind == "Upsample":
        pass  # codes repeated; the output takes the input's range (§3.2 forward copy)
    elif kind == "Mul":
        sc = xp.asarray(1.0, F64)
        for s in s_in:
            sc = sc * s
        sc = sc / s_out
        m, r = get_scale_and_shift(sc, 8)
        fb = fb | (m < chip.mul_multiplier_range[0]) | (m > chip.mul_multiplier_range[1])
        qp["m"] = m
        qp["r"] = xp.clip(r, 0, 31).astype(I32)
    elif kind == "Concat":
        ms, rs = [], []
        for k in range(len(th_in)):
            m, r = get_scale_and_shift_positive(s_in[k] / s_out, 8)
            same = (s_in[k] == s_out) & (sig_in[k] == signed_out)
            ms.append(xp.where(same, 1, m))
            rs.append(xp.where(same, 0, r))
        qp["m"] = xp.stack(ms).astype(I32)
        qp["r"] = xp.stack(rs).astype(I32)
    elif kind == "Relu":
        r = xp.maximum(cal_right_shift_num_use_cblas(xp.asarray(1.0), s_in[0], s_out), 0)
        qp["m"] = _to_int(_f32(_f32(1.0) * _f32((_pow2(r) * s_in[0]) / s_out)), -128, 127)
        qp["r"] = r.astype(I32)
    elif kind == "PRelu":
        # BM1684 PRelu lowering (TopToTpu/BM1684/PRelu.cpp): ONE rshift for the layer from max|slope|
        # (getRShiftAndMultiplierFromQScale), int8 slopes truncated toward zero; no in/out rescale (the output
        # takes the input's threshold, §3.2). Checked against TPU-MLIR 1.23's interpreter (tests/fixtures/tpu_mlir).
        slope = xp.ravel(_f32(weights["slope"]))
        r = rshift_from_qscale(xp.max(xp.abs(slope)))
        qp["m"] = multiplier_i8_from_qscale(slope, r).astype(I32)
        qp["r"] = xp.broadcast_to(r, qp["m"].shape).astype(I32)
    elif kind == "LeakyRelu":
        alpha = xp.asarray([op.attr("alpha", 0.01)], F32)
        m, r = get_scale_and_shift(alpha, 8)
        qp["m"], qp["r"] = m.astype(I32), r.astype(I32)
    elif kind in ("MaxPool", "AvgPool", "GlobalAvgPool"):
        # BM1684 forces output qtype = input qtype (T2T §3.2); th_out / signed_out only set the saturation range.
        pass
    elif kind == "Softmax":  # BM1684X (TPU-MLIR 1.23): exp table of the code distance to the row's max
        # table[i] = float(exp(-s_in * beta * i)), i = 0..255 (double maths, stored float32)
        beta = float(op.attr("beta", 1.0))
        qp["table"] = xp.exp(-(s_in[0] * beta) * xp.arange(256, dtype=F64)).astype(F32)
        qp["s_out"] = xp.asarray(s_out).astype(F32)
    elif kind in LUT_OPS:
        qp.update(lut_table(op, kind, sig_in[0], s_in[0], signed_out, s_out, chip.lut_round))
    qp["fallback"] = xp.asarray(fb, bool)
    return qp


def lut_table(op, kind: str, signed_in: bool, s_in, signed_out: bool, s_out, rnd: Round, zp_in: int = 0,
              zp_out: int = 0) -> dict:
    """The 256-entry table of a LUT activation (TPU-MLIR ``create_lookup_table``, double): for every input code ``q``,
    ``saturate(round(f((q - zp_in) * s_in) / s_out) + zp_out)`` with ``rnd``; zero points 0 for symmetric INT8
    (:mod:`qsens.quant.asym` passes its own).  ``{"lut": int32 codes, "lut_lo": the first input code}``."""
    xp = backend()
    lo_in, hi_in = qrange(signed_in)
    codes = xp.arange(lo_in, hi_in + 1, dtype=F64)
    y = _lut_fn(op, kind)((codes - zp_in) * s_in if zp_in else codes * s_in) / s_out
    y = round_to_int(y, rnd) + zp_out if zp_out else round_to_int(y, rnd)
    lo, hi = qrange(signed_out)
    return {"lut": xp.clip(y, lo, hi).astype(I32), "lut_lo": xp.asarray(lo_in, I32)}


def _pool_kernel(op, kind, in_shapes) -> tuple[int, int]:
    """Static kernel (kh, kw) (GlobalAvgPool: (H, W) of ``in_shapes[0]``, which must then be given)."""
    if kind == "GlobalAvgPool":
        if in_shapes is None:
            raise ValueError(f"op {op.name!r}: GlobalAvgPool's BM1684X parameters need in_shapes (the kernel is H, W)")
        return int(in_shapes[0][2]), int(in_shapes[0][3])
    kh, kw = op.attr("kernel_shape")
    return int(kh), int(kw)


def _div_rhaz(a, b):
    """``std::round((double)a / (double)b)`` for float32 ``a`` and a positive float32 ``b`` (given as float64), exact
    also where XLA's division is an ulp off under jit: the quotient of two floats is a .5 tie only when exactly one,
    so the rounding is decided by the exact products ``(k -+ 1/2) * b`` (``|k| < 2^29``: exact in double)."""
    xp = backend()
    a = xp.asarray(a).astype(F64)
    mag = xp.abs(a)
    k = xp.floor(mag / b + 0.5)
    k = xp.where((k - 0.5) * b > mag, k - 1, k)
    k = xp.where((k + 0.5) * b <= mag, k + 1, k)
    return xp.where(a < 0, -k, k)


def _multiplier_requant(op, kind, weights, s_in, s_out) -> dict:
    """BM1684X Conv (per output channel) / MatMul (per tensor) INT8 parameters: int8 (or uint8) weights with their own
    scale, an int32 bias, and an int32 multiplier + rshift from ``get_scale_and_shift(float(scale), 32)``.

    Conv (TopToTpu/BM1684X/Conv.cpp): ``fsign = min(W) < 0 or bias``; per channel ``scale_w = max(float(max|W_c| /
    fqmax), 1e-5f)`` (fqmax 127, or 255 for unsigned weights), ``W8 = to_int8(W / scale_w)`` (double quotient, half away
    from zero, saturating; to_uint8 when unsigned), ``b32 = round(b / (scale_w * s_in))``, ``(m, r) =
    get_scale_and_shift(float(scale_w * s_in / s_out), 32)``; an input scale <= 1e-5 is replaced by ``max|b|/127``
    (or ``max|W|/127`` when the bias is <= 1e-5 too).  MatMul (TopToTpu/BM1684X/MatMul.cpp, weight right operand):
    ``w_scale = max|W| / 127.0`` (double), ``W8 = to_int8(W / w_scale)``, ``b32 = round(b / (w_scale * s_in))``,
    ``(m, r) = get_scale_and_shift(float(s_in * w_scale / s_out), 32)``.  Weights quantized from all-integer values
    (``to_all_int8``) or with a stored weight scale are not reproduced (float models have neither)."""
    xp = backend()
    w = _f32(weights["q_filter"] if "q_filter" in weights else weights["filter"])
    b = weights.get("q_bias") if "q_filter" in weights else weights.get("bias")
    qp = {}
    if kind == "Conv":
        oc = w.shape[0]
        wc = xp.reshape(w, (oc, -1))
        fsign = (xp.min(w) < 0) | (b is not None)
        fqmax = xp.where(fsign, 127.0, 255.0).astype(F64)
        wmax_c = xp.max(xp.abs(wc), axis=1)  # float32
        # C++: float / float.  Computed in double and rounded once to float (exact for a quotient of two floats: 53 >=
        # 2*24 + 2); XLA's own float32 division under jit is not always correctly rounded (1 ulp seen, hypothesis)
        scale_w = xp.maximum((wmax_c.astype(F64) / fqmax).astype(F32), F32(1e-5)).astype(F64)
        bias_max = xp.max(xp.abs(_f32(b))).astype(F64) if b is not None else xp.asarray(1e-6, F64)
        wabs = xp.max(xp.abs(w)).astype(F64)
        s_small = xp.where(bias_max <= 1e-5, wabs / 127.0, bias_max / 127.0)
        s_in = xp.where(s_in <= 1e-5, s_small, s_in)
        q = _div_rhaz(wc, scale_w[:, None])
        lo, hi = xp.where(fsign, -128, 0), xp.where(fsign, 127, 255)
        qp["w8"] = xp.reshape(xp.clip(q, lo, hi).astype(I32), w.shape)
        scale_f = scale_w * s_in / s_out
        bdiv = scale_w * s_in
    else:
        if op.attr("transB", False):
            w = w.T
        w_scale = xp.max(xp.abs(w)).astype(F64) / 127.0
        qp["w8"] = xp.clip(round_to_int(w.astype(F64) / w_scale, Round.HALF_AWAY_FROM_ZERO), -128, 127).astype(I32)
        oc = w.shape[-1]
        scale_f = s_in * w_scale / s_out
        bdiv = w_scale * s_in
    if b is not None:
        b32 = round_to_int(xp.ravel(_f32(b)).astype(F64) / bdiv, Round.HALF_AWAY_FROM_ZERO)
        qp["b32"] = xp.clip(b32, -(2.0**31), 2.0**31 - 1).astype(I32)
    else:
        qp["b32"] = xp.zeros((oc,), I32)
    m, r = get_scale_and_shift(scale_f, 32)
    qp["m"], qp["r"] = m.astype(I32), r.astype(I32)
    return qp


def _lut_fn(op, kind):
    xp = backend()
    if kind == "Sigmoid":
        return lambda x: 1.0 / (1.0 + xp.exp(-x))
    if kind == "SiLU":
        return lambda x: x / (1.0 + xp.exp(-x))
    if kind == "Tanh":
        # XLA's f64 tanh is not exactly 1.0 where libm's is (|x| >~ 19), which moves 127/th ties; use exp there
        def tanh(x):
            ax = xp.abs(x)
            big = xp.sign(x) * (1.0 - 2.0 / (xp.exp(2.0 * xp.minimum(ax, 40.0)) + 1.0))
            return xp.where(ax > 0.5, big, xp.tanh(x))

        return tanh
    if kind == "HardSigmoid":
        # BM1684/HardSigmoid.cpp casts alpha, beta to float
        a, b = float(np.float32(op.attr("alpha", 0.2))), float(np.float32(op.attr("beta", 0.5)))
        return lambda x: xp.clip(a * x + b, 0.0, 1.0)
    if kind == "HardSwish":  # BM1684/HardSwish.cpp: x * min(max(x + 3, 0), 6) / 6
        return lambda x: x * xp.clip(x + 3.0, 0.0, 6.0) / 6.0
    if kind == "Exp":
        return lambda x: xp.exp(x)
    if kind == "Softplus":
        return lambda x: xp.log1p(xp.exp(x))
    raise ValueError(kind)


def avgpool_table(k: int) -> tuple[int, int]:
    """Re-export of the AvgPool (multiplier, rshift) rule for a kernel area ``k``."""
    return avgpool_multiplier_shift(k)
