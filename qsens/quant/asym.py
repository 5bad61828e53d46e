"""BM1684X *asymmetric* INT8, as TPU-MLIR 1.23 deploys it (``model_deploy.py --asymmetric``; ``mlir_lowering ...
asymmetric=True``).  TPU-MLIR's searches never lower asymmetrically (``MixQuantModel`` passes ``asymmetric=False``), so
this is a deployment simulation: ``qsens run --int8 --chip bm1684x --asymmetric``.

Rules: docs/bm1684x.md ("Asymmetric INT8"), read from TPU-MLIR 1.23's lowered models and sources and checked code
for code on its interpreter (``tests/fixtures/tpu_mlir/*/asym_bm1684x``, ``tests/test_asym_oracle.py``: PNet, RNet,
ONet, gen_act, gen_pool).  In short: ranges are the table's ``(min, max)`` after the import copies; ``scale = (max -
min) / 255``, ``zp = RHAZ(qmin - min / scale)``; Conv / MatMul fold ``-zp_in * sum(W8)`` into the int32 bias and
requantize with BM1684X's multiplier + shift (HALF_UP) then add ``zp_out``; Add / Concat / AvgPool subtract and add
zero points around their symmetric multipliers; MaxPool / Reshape / Permute move codes; PRelu and LeakyRelu run F16.
Rounding: RHAZ = round half away from zero (casts, tables, AvgPool), HALF_UP = round half toward +inf (shifts).

Op kinds outside these raise a one-line error naming the op: their asymmetric lowering was not checked against
TPU-MLIR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import QsensError
from .chip import BM1684X, ChipSpec, with_fp_type
from .numerics import Round, host_numpy, round_to_int, rshift_round

I32, F32 = jnp.int32, jnp.float32
#: op kinds modelled in asymmetric INT8 (each checked against TPU-MLIR 1.23's interpreter, tests/test_asym_oracle.py)
ASYM_INT8 = ("Conv", "MaxPool", "Softmax", "Add", "Concat", "AvgPool", "MatMul", "Reshape", "Permute", "Sigmoid")
#: table activations modelled (unsigned outputs only: see AsymModel)
LUT_KINDS = ("Sigmoid",)
#: ops TPU-MLIR 1.23 lowers to F16 in asymmetric mode on BM1684X (``if (asymmetric) LoweringF16``; seen: PNet's and
#: gen_act's PRelus, gen_act's LeakyRelu)
ASYM_F16 = ("PRelu", "LeakyRelu")
_INPUT = "Input"


def scale_zp(mn: float, mx: float, signed: bool = True) -> tuple[float, int]:
    """TPU-MLIR's asymmetric ``(scale, zero point)`` of a range (``Module.cpp:getScaleAndZeroPoint``, double):
    ``qmin, qmax = -128, 127`` (int8) or ``0, 255`` (uint8), ``scale = (max - min) / (qmax - qmin)``, ``zpf = qmin -
    min / scale``, ``zp = RHAZ(zpf)`` (C ``round``: half away from zero); ``zpf < qmin``: ``zp = qmin``, ``scale = max /
    (qmax - qmin)``; ``zpf > qmax``: ``zp = qmax``, ``scale = min / (qmin - qmax)``.  An unsigned tensor therefore
    always has ``zp = 0`` and ``scale = max / 255``."""
    qmin, qmax = (-128, 127) if signed else (0, 255)
    mn, mx = float(mn), float(mx)
    s = (mx - mn) / float(qmax - qmin)
    if not s > 0:
        raise QsensError(f"asymmetric INT8: an empty range [{mn}, {mx}] has no scale; check the calibration table")
    z = qmin - mn / s
    if z < qmin:
        return mx / float(qmax - qmin), qmin
    if z > qmax:
        return mn / float(qmin - qmax), qmax
    return s, int(np.sign(z) * np.floor(abs(z) + 0.5))


@dataclasses.dataclass(frozen=True)
class TensorQ:
    scale: float
    zp: int
    signed: bool

    @property
    def dtype(self) -> str:
        return "I8" if self.signed else "U8"

    @property
    def lo(self) -> int:
        return -128 if self.signed else 0

    @property
    def hi(self) -> int:
        return 127 if self.signed else 255


class AsymModel:
    """The asymmetric BM1684X INT8 model of ``model`` (a converted ONNX model, ``fn.model``) for a calibration
    ``table`` (:class:`qsens.tables.CaliTable`).  Parameters are computed once on the host; :meth:`apply` is one jitted
    program.  ``qinfo[t]``: the :class:`TensorQ` of every INT8 tensor (TPU-MLIR's ``qinfo``); ``cast_q[t]``: that of
    an F16 tensor where an INT8 consumer casts it."""

    def __init__(self, model, params: Mapping, table, chip: ChipSpec | str = BM1684X, fp_type: str = "auto"):
        from .mixed import plan_from_table

        chip = with_fp_type(chip, fp_type)
        if not chip.per_channel_conv:
            raise QsensError(f"--asymmetric: TPU-MLIR's asymmetric INT8 is modelled for BM1684X only, not {chip.name}; "
                             "use --chip bm1684x or drop --asymmetric")
        self.model, self.graph, self.chip = model, model.graph, chip
        g = self.graph
        for op in g.ops:
            kind = op.type
            if kind == _INPUT or kind in ASYM_F16:
                continue
            if kind not in ASYM_INT8:
                raise QsensError(f"op '{op.name}' ({kind}): its asymmetric BM1684X INT8 form is not modelled (checked: "
                                 f"{', '.join(ASYM_INT8 + ASYM_F16)}); drop --asymmetric")
            if kind == "MatMul" and op.weight("filter") is None:
                raise QsensError(f"op '{op.name}' (MatMul of two activations): its asymmetric form is not modelled; "
                                 "drop --asymmetric")
        plan = plan_from_table(g, table, chip)
        self.plan = plan
        for op in g.ops:
            if op.type in LUT_KINDS and plan.signed[op.outputs[0]]:
                raise QsensError(f"op '{op.name}' ({op.type}) with a signed output: TPU-MLIR 1.23 builds its asymmetric "
                                 "table with a symmetric output side (not modelled); drop --asymmetric")
        tmin = np.array([table[t].min for t in g.tensors], np.float64)
        tmax = np.array([table[t].max for t in g.tensors], np.float64)
        if plan.copy_scale is not None and np.any(plan.copy_scale != 1):
            raise QsensError("--asymmetric: scaled range copies (MulConst chains) are not modelled; drop --asymmetric")
        mins, maxs = tmin[plan.min_src], tmax[plan.copy_src]
        for t, v in plan.fixed_th.items():  # Softmax / Sigmoid outputs: [0, 1]
            i = plan.tensor_index[t]
            mins[i], maxs[i] = 0.0, v
        self.qinfo: dict[str, TensorQ] = {}
        self.cast_q: dict[str, TensorQ] = {}
        for i, t in enumerate(g.tensors):
            sg = bool(plan.signed[t])
            q = TensorQ(*scale_zp(mins[i] if sg else 0.0, maxs[i], sg), sg)
            (self.cast_q if g.producer(t).type in ASYM_F16 else self.qinfo)[t] = q
        self.qp = {op.name: self._params(op, params) for op in g.ops if op.type != _INPUT and op.type not in ASYM_F16}
        self._fn = jax.jit(self._forward)

    def _in_q(self, t: str) -> TensorQ:
        return self.qinfo.get(t) or self.cast_q[t]

    def _params(self, op, params) -> dict:
        """Host (NumPy) parameters of one INT8 op: the symmetric BM1684X rules on the asymmetric scales, plus the
        zero-point corrections."""
        from .qparams import qparams_for

        g = self.graph
        ins = [self._in_q(t) for t in op.inputs]
        qo = self.qinfo[op.outputs[0]]
        w = {r: np.asarray(params[k]) for r, k in op.weights}
        kind = op.type
        if kind in ("MaxPool", "Reshape", "Permute"):
            return {}
        if kind in LUT_KINDS:  # create_lookup_table with both zero points (double, RHAZ)
            from .qparams import lut_table

            with host_numpy():
                qp = lut_table(op, kind, ins[0].signed, ins[0].scale, qo.signed, qo.scale, Round.HALF_AWAY_FROM_ZERO,
                               ins[0].zp, qo.zp)
            return {k: np.asarray(v) for k, v in qp.items()}
        if kind == "AvgPool":  # Pool2D's scale = s_in / (k * s_out), offset = zp_out - (s_in / s_out) * zp_in
            kh, kw = self._pool_kernel(op)
            k = kh * kw
            return {"scale": ins[0].scale / (k * qo.scale), "offset": qo.zp - (ins[0].scale / qo.scale) * ins[0].zp}
        with host_numpy():
            qp = qparams_for(op, w, [1.0] * len(ins), 1.0, tuple(q.signed for q in ins), qo.signed, self.chip,
                             in_shapes=[g.tensor_shape(t) for t in op.inputs],
                             scales=([q.scale for q in ins], qo.scale))
        qp = {k: np.asarray(v) for k, v in qp.items()}
        if kind in ("Conv", "MatMul"):
            w8 = qp["w8"].astype(np.int64)
            fsign = bool(w8.min() < 0) or op.weight("bias") is not None or op.weight("q_bias") is not None
            if kind == "Conv":
                wsum = w8.reshape(w8.shape[0], -1).sum(1)
            else:
                wsum = w8.sum(0)
            # the input zero point folded into the int32 bias (an unsigned filter's correction is 0 in TPU-MLIR 1.23:
            # summed from its empty int8 buffer)
            b32 = qp["b32"].astype(np.int64) - (ins[0].zp * wsum if fsign else 0)
            if np.any(np.abs(b32) >= 2**31):
                raise QsensError(f"op '{op.name}': the zero-point-folded int32 bias overflows; drop --asymmetric")
            qp["b32"] = b32.astype(np.int32)
        return qp

    def _pool_kernel(self, op) -> tuple[int, int]:
        from .qparams import _pool_kernel, op_kind

        return _pool_kernel(op, op_kind(op), [self.graph.tensor_shape(op.inputs[0])])

    # ------------------------------------------------------------------------------------------------ forward
    def quantize_input(self, x, t: str):
        """F32 -> INT8 of a model input: ``saturate(RHAZ(x / scale) + zp)``, the quotient in double (host NumPy)."""
        q = self.qinfo[t]
        v = np.asarray(x, np.float64) / q.scale
        v = np.sign(v) * np.floor(np.abs(v) + 0.5) + q.zp
        return np.clip(v, q.lo, q.hi).astype(np.int32)

    def _cast_in(self, x: str, codes: dict, floats: dict):
        """An INT8 op's input ``x`` as codes: its own, or an F16 tensor cast ``RHAZ(f16(v * f16(float32(1 / scale))))
        + zp``, saturated."""
        from ..onnx.convert import round_to_float_type

        if x in codes:
            return codes[x]
        cq, ft = self.cast_q[x], self.chip.mix_float_type
        inv = round_to_float_type(F32(1.0 / cq.scale), ft)
        v = round_to_float_type(floats[x] * inv, ft)
        return jnp.clip(round_to_int(v, Round.HALF_AWAY_FROM_ZERO) + cq.zp, cq.lo, cq.hi).astype(I32)

    def int8_op(self, op, xs):
        """One INT8 op on its input codes (int32 arrays, NCHW); int32 output codes."""
        from .kernels import _conv_fn, _dot_fn, _exact, _pool_pads, _softmax_table, requant_multiplier

        qp = {k: jnp.asarray(v) for k, v in self.qp[op.name].items()}
        ins = [self._in_q(t) for t in op.inputs]
        qo = self.qinfo[op.outputs[0]]
        relu = bool(op.attr("do_relu", False))
        kind = op.type
        if kind == "Conv":
            pads = tuple(op.attr("pads", (0, 0, 0, 0)))
            x = xs[0]
            if any(pads):  # padding holds the input zero point
                x = jnp.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=ins[0].zp)
                op = dataclasses.replace(op, attrs=tuple((k, (0, 0, 0, 0) if k == "pads" else v) for k, v in op.attrs))
            w8 = qp["w8"]
            acc = _exact(_conv_fn(op), x, w8, int(np.prod(w8.shape[1:])), op.name)
            shp = (1, -1, 1, 1)
            y = requant_multiplier(acc, qp["b32"].reshape(shp), qp["m"].reshape(shp), qp["r"].reshape(shp)) + qo.zp
        elif kind == "MatMul":
            acc = _exact(_dot_fn, xs[0], qp["w8"], int(qp["w8"].shape[0]), op.name)
            y = requant_multiplier(acc, qp["b32"], qp["m"], qp["r"]) + qo.zp
        elif kind == "Add":  # sum_k RSR((q_k - zp_k) * m_k, r_k, HALF_UP) + zp_out
            y = sum(rshift_round((x - q.zp) * qp["m"][k], qp["r"][k], Round.HALF_UP)
                    for k, (x, q) in enumerate(zip(xs, ins))) + qo.zp
        elif kind == "Concat":  # RequantInt of each input whose qparams differ: RSR((q - zp) * m, r, HALF_AWAY) + zp
            parts = []
            for k, (x, q) in enumerate(zip(xs, ins)):
                if (q.scale, q.zp, q.signed) == (qo.scale, qo.zp, qo.signed):
                    parts.append(x)
                else:
                    v = rshift_round((x - q.zp) * qp["m"][k], qp["r"][k], Round.HALF_AWAY_FROM_ZERO) + qo.zp
                    parts.append(jnp.clip(v, qo.lo, qo.hi))
            y = jnp.concatenate(parts, axis=int(op.attr("axis", 1)))
        elif kind == "AvgPool":
            # saturate(RHAZ(sum * scale + offset)); the interpreter pads with the input zero point and divides by the
            # whole kernel, count_include_pad=0 or not (gen_pool's 3x3, pads 1: every border code)
            kh, kw = self._pool_kernel(op)
            st = tuple(op.attr("strides", (kh, kw)))
            x = xs[0]
            pads = tuple(op.attr("pads", (0, 0, 0, 0)))
            if any(pads):
                x = jnp.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=ins[0].zp)
            ssum = jax.lax.reduce_window(x, jnp.int32(0), jax.lax.add, (1, 1, kh, kw), (1, 1) + tuple(st), "VALID")
            v = ssum.astype(jnp.float64 if jax.config.jax_enable_x64 else F32) * qp["scale"] + qp["offset"]
            y = round_to_int(v, Round.HALF_AWAY_FROM_ZERO).astype(I32)
        elif kind == "MaxPool":
            kh, kw = tuple(op.attr("kernel_shape"))
            sh, sw = tuple(op.attr("strides", (1, 1)))
            y = jax.lax.reduce_window(xs[0], jnp.int32(-(2**31)), jax.lax.max, (1, 1, kh, kw), (1, 1, sh, sw),
                                      _pool_pads(op))
        elif kind == "Softmax":
            y = _softmax_table(op, xs[0], qp)
        elif kind in LUT_KINDS:
            y = jnp.take(qp["lut"], xs[0] - qp["lut_lo"], mode="clip")
        elif kind in ("Reshape", "Permute"):  # data movement on the codes (same scale and zero point)
            from ..onnx.convert import run_op_roles

            return run_op_roles(op, {}, [xs[0]])[0].astype(I32)
        else:  # refused in __init__
            raise AssertionError(kind)
        if relu and kind in ("Conv", "MatMul", "Add"):
            y = jnp.maximum(y, qo.zp)  # a fused ReLU: nothing below the zero point
        return jnp.clip(y, qo.lo, qo.hi).astype(I32)

    def _forward(self, params, codes_in: dict):
        from ..onnx.convert import run_op_planned

        g = self.graph
        codes: dict = dict(codes_in)  # INT8 tensors: int32 codes
        floats: dict = {}  # F16 tensors: float32 values (F16-representable)
        ft = self.chip.mix_float_type
        for op in g.ops:
            if op.type == _INPUT:
                continue
            t = op.outputs[0]
            if op.type in ASYM_F16:  # INT8 -> F16: (q - zp) * float32(scale), not rounded; the op in F16
                vs = []
                for x in op.inputs:
                    if x in codes:
                        q = self.qinfo[x]
                        vs.append((codes[x] - q.zp).astype(F32) * F32(q.scale))
                    else:
                        vs.append(floats[x])
                weights = {r: params[k] for r, k in op.weights}
                floats[t] = run_op_planned(op, weights, vs, [False] * len(vs), False, ft, round_in=[False] * len(vs))[0]
                continue
            codes[t] = self.int8_op(op, [self._cast_in(x, codes, floats) for x in op.inputs])
        return codes, floats

    def apply(self, params, inputs: Mapping[str, np.ndarray]):
        """``(values, codes)`` of every tensor for float ``inputs`` (NCHW): ``values[t]`` float32 (INT8 tensors
        dequantized, ``(q - zp) * float32(scale)``; F16 tensors as computed), ``codes[t]`` the integer codes of
        every INT8 tensor (the inputs' included)."""
        g = self.graph
        codes_in = {t: jnp.asarray(self.quantize_input(inputs[t], t)) for t in g.inputs}
        codes, floats = self._fn(params, codes_in)
        codes = {t: np.asarray(v) for t, v in codes.items()}
        values = {t: np.asarray(v, np.float32) for t, v in floats.items()}
        for t, q in codes.items():
            qi = self.qinfo[t]
            values[t] = ((q - qi.zp).astype(np.float32) * np.float32(qi.scale)).astype(np.float32)
        return values, codes
