"""BM1684X *asymmetric* INT8, as TPU-MLIR 1.23 deploys it (``model_deploy.py --asymmetric``; ``mlir_lowering ...
asymmetric=True``).  TPU-MLIR's searches never lower asymmetrically (``MixQuantModel`` passes ``asymmetric=False``), so
this is a deployment simulation: ``qsens run --int8 --chip bm1684x --asymmetric``.

Rules (read from TPU-MLIR 1.23's lowered PNet and its interpreter, ``tests/fixtures/tpu_mlir/mtcnn_pnet/asym_bm1684x``;
every code of every tensor checked, ``tests/test_asym_oracle.py``):

* every tensor's range is the calibration table's ``(min, max)`` after TPU-MLIR's import copies (the same copy map as
  the symmetric plan, :func:`qsens.quant.mixed.make_plan`, applied to the ``min`` and ``max`` columns: PNet's PRelu and
  MaxPool outputs carry the conv's range); ``scale = (max - min) / (qmax - qmin)`` in double and
  ``zp = RHAZ(qmin - min / scale)`` (round half away from zero; PNet's input: -128 + 127.5 -> -1), int8
  ``[-128, 127]``; the Softmax output is uint8 ``[0, 255]`` with its fixed range [0, 1] (scale 1/255, zp 0);
* F32 -> INT8 (the input): ``saturate(RHAZ(x / scale) + zp)``, the quotient in double;
* Conv: the symmetric BM1684X weights, multiplier and shift of :func:`qsens.quant.qparams._multiplier_requant` on the
  asymmetric scales; the input zero point folded into the int32 bias, ``b32 - zp_in * sum(W8_c)``; padding with the
  input zero point; ``saturate(RightShiftRound((acc + b32') * m, r, HALF_UP) + zp_out)``;
* MaxPool: on the codes (input and output share scale and zero point);
* PRelu: not INT8 in asymmetric mode: an F16 op; INT8 -> F16 is ``(q - zp) * float32(scale)`` (not rounded), F16 ->
  INT8 ``saturate(RHAZ(f16(x * f16(float32(1 / scale)))) + zp)``;
* Softmax: the symmetric exp table of the code distance to the row max (the zero point cancels), uint8 out;
* INT8 -> F32 (an output): ``(q - zp) * float32(scale)``.

Op kinds outside these raise a one-line error naming the op: their asymmetric lowering was not checked against
TPU-MLIR (a fused ReLU included).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import QsensError
from .chip import BM1684X, ChipSpec, with_fp_type
from .numerics import Round, host_numpy, round_to_int

I32, F32 = jnp.int32, jnp.float32
#: op kinds modelled in asymmetric INT8 (the rest of ASYM_F16 run as F16 ops)
ASYM_INT8 = ("Conv", "MaxPool", "Softmax")
#: ops TPU-MLIR 1.23 lowers to the float type in asymmetric mode on BM1684X (seen: PNet's PRelus)
ASYM_F16 = ("PRelu",)
#: ops that change no value (their output tensor keeps the input's codes)
_INPUT = "Input"


def scale_zp(mn: float, mx: float, signed: bool = True) -> tuple[float, int]:
    """TPU-MLIR's asymmetric ``(scale, zero point)`` of a range: ``scale = (max - min) / 255`` (double),
    ``zp = RHAZ(qmin - min / scale)`` with ``qmin = -128`` (int8) or ``0`` (uint8), clamped to the storage range."""
    qmin, qmax = (-128, 127) if signed else (0, 255)
    mn, mx = float(mn), float(mx)
    s = (mx - mn) / float(qmax - qmin)
    if s <= 0:
        raise QsensError(f"asymmetric INT8: an empty range [{mn}, {mx}] has no scale; check the calibration table")
    z = qmin - mn / s
    zp = int(np.sign(z) * np.floor(abs(z) + 0.5))  # round half away from zero
    return s, int(min(max(zp, qmin), qmax))


@dataclasses.dataclass(frozen=True)
class TensorQ:
    scale: float
    zp: int
    signed: bool

    @property
    def dtype(self) -> str:
        return "I8" if self.signed else "U8"


class AsymModel:
    """The asymmetric BM1684X INT8 model of ``model`` (a converted ONNX model, ``fn.model``) for a calibration
    ``table`` (:class:`qsens.tables.CaliTable`).  Parameters are computed once on the host; :meth:`apply` is one jitted
    program.  ``qinfo[t]``: the :class:`TensorQ` of every INT8 tensor (as TPU-MLIR's ``qinfo``)."""

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
            if op.attr("do_relu", False):
                raise QsensError(f"op '{op.name}' ({kind}) has a fused ReLU: its asymmetric BM1684X form is not modelled; "
                                 "drop --asymmetric")
        plan = plan_from_table(g, table, chip)
        self.plan = plan
        tmin = np.array([table[t].min for t in g.tensors], np.float64)
        tmax = np.array([table[t].max for t in g.tensors], np.float64)
        if plan.copy_scale is not None and np.any(plan.copy_scale != 1):
            raise QsensError("--asymmetric: scaled range copies (MulConst chains) are not modelled; drop --asymmetric")
        mins, maxs = tmin[plan.min_src], tmax[plan.copy_src]
        for t, v in plan.fixed_th.items():  # Softmax / Sigmoid outputs: [0, 1]
            i = plan.tensor_index[t]
            mins[i], maxs[i] = 0.0, v
        self.qinfo: dict[str, TensorQ] = {}
        for i, t in enumerate(g.tensors):
            op = g.producer(t)
            if op.type in ASYM_F16:
                continue  # an F16 tensor; its INT8 consumers cast it with the tensor's own range (below)
            signed = op.type != "Softmax"
            s, z = scale_zp(mins[i], maxs[i], signed)
            self.qinfo[t] = TensorQ(s, z, signed)
        # an F16 op's output as an INT8 consumer reads it: the range of the tensor (PNet: the conv's, via the copies)
        self.cast_q = {t: TensorQ(*scale_zp(mins[i], maxs[i], True), True)
                       for i, t in enumerate(g.tensors) if g.producer(t).type in ASYM_F16}
        self.qp = {op.name: self._conv_params(op, params) for op in g.ops if op.type == "Conv"}
        for op in g.ops:
            if op.type == "Softmax":
                qi = self._in_q(op.inputs[0])
                beta = float(op.attr("beta", 1.0))
                self.qp[op.name] = {"table": np.exp(-(qi.scale * beta) * np.arange(256, dtype=np.float64)).astype(np.float32),
                                    "s_out": np.float32(self.qinfo[op.outputs[0]].scale)}
        self._fn = jax.jit(self._forward)

    def _in_q(self, t: str) -> TensorQ:
        return self.qinfo.get(t) or self.cast_q[t]

    def _conv_params(self, op, params) -> dict:
        from .qparams import _multiplier_requant

        qi, qo = self._in_q(op.inputs[0]), self.qinfo[op.outputs[0]]
        w = {r: np.asarray(params[k]) for r, k in op.weights}
        with host_numpy():
            qp = _multiplier_requant(op, "Conv", w, np.float64(qi.scale), np.float64(qo.scale))
        w8 = np.asarray(qp["w8"]).astype(np.int64)
        b32 = np.asarray(qp["b32"]).astype(np.int64) - qi.zp * w8.reshape(w8.shape[0], -1).sum(1)
        if np.any(np.abs(b32) >= 2**31):
            raise QsensError(f"op '{op.name}': the zero-point-folded int32 bias overflows; drop --asymmetric")
        return {"w8": w8.astype(np.int32), "b32": b32.astype(np.int32), "m": np.asarray(qp["m"]).astype(np.int32),
                "r": np.asarray(qp["r"]).astype(np.int32)}

    # ------------------------------------------------------------------------------------------------ forward
    def quantize_input(self, x, t: str):
        """F32 -> INT8 of a model input: ``saturate(RHAZ(x / scale) + zp)``, the quotient in double (host NumPy)."""
        q = self.qinfo[t]
        v = np.asarray(x, np.float64) / q.scale
        v = np.sign(v) * np.floor(np.abs(v) + 0.5) + q.zp
        lo, hi = (-128, 127) if q.signed else (0, 255)
        return np.clip(v, lo, hi).astype(np.int32)

    def _forward(self, params, codes_in: dict):
        from ..onnx.convert import round_to_float_type, run_op_planned
        from .kernels import _conv_fn, _exact, _softmax_table, requant_multiplier

        g = self.graph
        codes: dict = dict(codes_in)  # INT8 tensors: int32 codes
        floats: dict = {}  # F16 tensors: float32 values (F16-representable)
        ft = self.chip.mix_float_type
        for op in g.ops:
            if op.type == _INPUT:
                continue
            t = op.outputs[0]
            if op.type in ASYM_F16:
                x = op.inputs[0]
                q = self.qinfo[x]
                v = (codes[x] - q.zp).astype(F32) * F32(q.scale)  # INT8 -> F16: float32, not rounded
                weights = {r: params[k] for r, k in op.weights}
                floats[t] = run_op_planned(op, weights, [v], [False], False, ft, round_in=[False])[0]
                continue
            xs = []
            for x in op.inputs:
                if x in codes:
                    xs.append(codes[x])
                else:  # F16 -> INT8 in F16 arithmetic, then the zero point
                    cq = self.cast_q[x]
                    inv = round_to_float_type(F32(1.0 / cq.scale), ft)
                    v = round_to_float_type(floats[x] * inv, ft)
                    xs.append(jnp.clip(round_to_int(v, Round.HALF_AWAY_FROM_ZERO) + cq.zp, -128, 127).astype(I32))
            qo = self.qinfo[t]
            lo, hi = (-128, 127) if qo.signed else (0, 255)
            if op.type == "Conv":
                qp = self.qp[op.name]
                zp_in = self._in_q(op.inputs[0]).zp
                pads = tuple(op.attr("pads", (0, 0, 0, 0)))
                x = xs[0]
                if any(pads):  # padding holds the input zero point
                    x = jnp.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=zp_in)
                    op_np = dataclasses.replace(op, attrs=tuple((k, (0, 0, 0, 0) if k == "pads" else v) for k, v in op.attrs))
                else:
                    op_np = op
                w8 = jnp.asarray(qp["w8"])
                acc = _exact(_conv_fn(op_np), x, w8, int(np.prod(qp["w8"].shape[1:])), op.name)
                shp = (1, -1, 1, 1)
                y = requant_multiplier(acc, jnp.asarray(qp["b32"]).reshape(shp), jnp.asarray(qp["m"]).reshape(shp),
                                       jnp.asarray(qp["r"]).reshape(shp))
                codes[t] = jnp.clip(y + qo.zp, lo, hi).astype(I32)
            elif op.type == "MaxPool":
                from .kernels import _pool_pads

                kh, kw = tuple(op.attr("kernel_shape"))
                sh, sw = tuple(op.attr("strides", (1, 1)))
                codes[t] = jax.lax.reduce_window(xs[0], jnp.int32(-(2**31)), jax.lax.max, (1, 1, kh, kw), (1, 1, sh, sw),
                                                 _pool_pads(op))
            elif op.type == "Softmax":
                qp = {k: jnp.asarray(v) for k, v in self.qp[op.name].items()}
                codes[t] = jnp.clip(_softmax_table(op, xs[0], qp), lo, hi).astype(I32)
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
