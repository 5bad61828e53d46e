"""The BM1684 mixed-precision model: every op INT8 or F32, chosen by a *dynamic* mask.

``MixedModel.apply(params, inputs, thresholds, int8_mask) -> outputs`` is one jit-compiled function of

* ``thresholds``: float array, one per canonical tensor (``graph.tensors`` order, Input first);
* ``int8_mask``: bool array, one per canonical op (``graph.ops`` order, Input first).

An op whose mask bit is set runs TPU-MLIR's BM1684 INT8 lowering: its float inputs are cast F32 -> INT8 with
the input tensors' thresholds (:func:`qsens.quant.kernels.quantize`, round half away from zero), the INT8
kernel runs on integer codes and its codes are cast back (dequantized).  Every tensor is carried as a float
(an INT8 producer's output is its dequantized codes, which re-quantize exactly), which is TPU-MLIR's mixed
lowering: casts are inserted exactly at INT8/F32 boundaries.  All-ones = the INT8 model; all-zeros = the
float model (bit-identical to the float reference).  Changing thresholds or the mask never recompiles.

Static per calibration table (a change recompiles, documented): the signedness of every tensor and the
threshold *copy map* of TPU-MLIR's calibration post-processing (spec §3.2), applied as
``effective = thresholds[copy_src]``:

* outputs of Reshape/Flatten/Squeeze/Unsqueeze, Permute, Pad, Slice, MaxPool, AvgPool (BM1684) and standalone
  Relu take their input's threshold and sign (forward copy);
* an op with a fused ReLU (``do_relu``) has an unsigned output (uint8, ``s = th/255``);
* Sigmoid and Softmax outputs are ``[0, 1]``: threshold 1, unsigned.

and, applied first (last op first), the backward copies of §3.2: a single-use input of a standalone Relu,
MaxPool, DepthToSpace or Abs takes the op's output range; of PRelu / LeakyRelu only its max; the inputs of
a Concat/Min/Max that only it (or MaxPools) uses and that share a sign take the output's range.

The rules are TPU-MLIR 1.23's as its own lowering shows them (``reference/tpu_mlir/run.py`` dumps the scale of
every tensor of the INT8 model; ``tests/test_tpu_mlir_oracle.py`` compares).  The two ends of a range are copied
separately (a PRelu input takes the PRelu's max and keeps its own min) and the scale is ``max(|min|, |max|)/127``,
so an effective threshold can be the larger of two table thresholds (:class:`QuantPlan`).  PRelu and LeakyRelu
outputs then take their input's range (forward copy), which the spec's §3.2 step 6 lists and qsens had missed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import TableError
from ..onnx.convert import FLOAT_TYPE_FOLLOWS_INPUT, f32_tensor, run_graph, run_op_roles
from ..onnx.ir import Graph, Op
from .chip import BM1684, ChipSpec
from .kernels import dequantize, int8_op, pad_value_code, quantize, quantize_from
from .qparams import op_kind, qparams_for, static_fallback

#: Data movement: INT8 codes pass through unchanged (output threshold = input threshold).
PASS_THROUGH = {"Reshape", "Permute", "Pad", "Slice", "Tile", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
#: ... of which these (TPU-MLIR's top.Reshape) are lowered with their input's type, so alone they never quantize;
#: the others (Permute checked on MTCNN RNet; Pad/Slice/Tile assumed alike, not yet checked) cast their input.
FOLLOWS_INPUT_TYPE = FLOAT_TYPE_FOLLOWS_INPUT  # {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
#: Output (min, max) copied from the input by TPU-MLIR's calibration post-processing on BM1684.
#: PRelu / LeakyRelu included: TPU-MLIR 1.23 gives their output the input's scale (tests/fixtures/tpu_mlir, the
#: lowered INT8 models of MTCNN PNet and the generated nets).
FORWARD_COPY = PASS_THROUGH | {"MaxPool", "AvgPool", "Relu", "PRelu", "LeakyRelu", "Upsample"}
#: ... scaled by ``|const_val|`` (§3.2 step 6; checked on the generated mbv3s net's MulConst, TPU-MLIR 1.23)
SCALED_COPY = {"MulConst"}
UNIT_RANGE = {"Sigmoid", "Softmax"}


def int8_support(op: Op, graph: Graph, chip: ChipSpec = BM1684) -> str | None:
    """None when ``chip`` (BM1684 by default) has an INT8 form of ``op`` (kernel or pass-through), else the reason it
    stays F32."""
    if op.type == "Input" or op.type in PASS_THROUGH:
        return None
    if not chip.weight_operand_int8 and op.type in ("Add", "Mul", "Concat", "MatMul") and (
            op.consts or (op.weights and op.type != "MatMul") or (op.type == "MatMul" and op.weight("filter") is None
                                                                   and op.weight("q_filter") is None)):
        return (f"{op.type} with a weight/constant or activation-only operands: qsens does not model TPU-MLIR's "
                f"{chip.name} INT8 lowering of it (kept F32)")
    bm1684 = chip.name == "BM1684"
    why_x = f": qsens does not model TPU-MLIR's {chip.name} INT8 lowering of it (kept F32)"
    if op.type == "MatMul" and op.weight("filter") is None and op.weight("q_filter") is None:
        return "MatMul with an activation right operand is lowered to F32 on BM1684" if bm1684 else \
            "MatMul with an activation right operand" + why_x
    if op.type == "MatMul" and len(graph.tensor_shape(op.inputs[0])) != 2:
        return "batched MatMul is lowered to F32 on BM1684 (only plain FC is INT8)" if bm1684 else \
            "batched MatMul" + why_x
    if op.type == "Concat" and (op.weights or op.consts):
        return "Concat with a constant input is lowered to F32 on BM1684" if bm1684 else \
            f"Concat with a constant input is lowered to the float type on {chip.name}"
    if op.type in ("Add", "Mul") and (op.consts or (op.weights and op.attr("weight_signed") is None)):
        return f"{op.type} with a constant operand is not lowered to INT8 here"
    if op.type == "Relu" and op.attr("relu_limit", -1.0) >= 0:
        return None
    return static_fallback(op, [graph.tensor_shape(t) for t in op.inputs], chip)


@dataclasses.dataclass(frozen=True, eq=False)
class QuantPlan:
    """Static quantization facts of one graph + calibration table (signedness, copy map, F32 ops).

    TPU-MLIR imports each tensor as a range ``(min, max) = (-th or 0, th)`` and its post-processing copies the
    two ends separately (a PRelu input takes its output's *max* but keeps its own *min*); the scale is then
    ``max(|min|, |max|)/127`` (``max/255`` when ``min = 0``).  So the effective threshold of tensor ``t`` is
    ``th[copy_src[t]]``, or ``max(th[copy_src[t]], th[min_src[t]])`` when its min is negative
    (``signed[t]``)."""

    graph: Graph
    tensor_index: dict[str, int]
    copy_src: np.ndarray  # int32 (n_tensors,): where each tensor's max (threshold) comes from
    signed: dict[str, bool]
    fixed_th: dict[str, float]  # Sigmoid/Softmax outputs: threshold 1
    f32_reason: dict[str, str]  # op name -> why it stays F32 in the INT8 model
    min_src: np.ndarray | None = None  # int32: where each tensor's min (-threshold) comes from (default copy_src)
    copy_scale: np.ndarray | None = None  # float32 factor on the copied range (MulConst outputs), default 1
    chip: ChipSpec = BM1684  # the chip whose INT8 lowering the plan's F32 set and every INT8 kernel follow

    @property
    def float_type(self) -> str:
        """What the float layers of this plan's mixed models run in: the chip's ``mix_float_type`` (``--fp_type``)."""
        return self.chip.mix_float_type

    @property
    def int8_ops(self) -> list[str]:
        return [op.name for op in self.graph.ops if op.name not in self.f32_reason]

    def effective(self, thresholds):
        """Thresholds after the copy map (works on numpy and jax arrays, batched along axis 0 too)."""
        xp = jnp if isinstance(thresholds, jax.Array) else np
        base = thresholds
        if self.fixed_th:  # fixed ranges are set at import, so copies of them carry them too
            idx = np.array([self.tensor_index[t] for t in self.fixed_th])
            val = np.array(list(self.fixed_th.values()), np.float32)
            if xp is np:
                base = np.array(thresholds, copy=True)
                base[..., idx] = val
            else:
                base = base.at[..., idx].set(val)
        scaled = self.copy_scale is not None and bool(np.any(self.copy_scale != 1))
        fac = xp.asarray(self.copy_scale) if scaled else None
        th = xp.take(base, xp.asarray(self.copy_src), axis=-1)
        if scaled:
            th = th * fac
        if self.min_src is not None and not np.array_equal(self.min_src, self.copy_src):
            neg = np.array([self.signed[t] for t in self.graph.tensors])
            th_min = xp.take(base, xp.asarray(self.min_src), axis=-1)
            if scaled:
                th_min = th_min * fac
            th = xp.where(xp.asarray(neg), xp.maximum(th, th_min), th)
        return th


#: §3.2 step 2 KeepSign: the output's sign follows the input's
KEEP_SIGN = {"AvgPool", "MaxPool", "Abs"}
#: §3.2 step 4: a single-use input of these ops takes the op's output (min, max) ...
BACKWARD_FULL = {"Relu", "MaxPool", "DepthToSpace", "Abs"}
#: ... or only its max, keeping its own min (checked against TPU-MLIR 1.23: PNet's conv2d_Conv with the
#: threshold 10.8249 under a PRelu whose MaxPool has 13.3756 gets the scale 13.3756/127)
BACKWARD_MAX = {"PRelu", "LeakyRelu"}
#: §3.2 step 3: inputs used only by this op (or also by MaxPools) with one sign take the output's (min, max)
BACKWARD_MULTI = {"Concat", "Min", "Max"}


def make_plan(graph: Graph, table_min: Mapping[str, float] | None = None, chip: ChipSpec = BM1684) -> QuantPlan:
    """Signedness from the calibration table's ``min`` column (``min < 0`` -> signed int8, else uint8), after
    TPU-MLIR's calibration post-processing (spec §3.2): the import (``do_relu`` -> min 0, Sigmoid/Softmax ->
    [0, 1]), backward copies (steps 3-4, last op first), then forward copies (step 6); the result is a static
    copy map of each tensor's max and min plus signedness.  ``chip``: BM1684 copies an AvgPool's input range to its
    output (§3.2 step 6), BM1684X does not (its AvgPool requantizes: TopToTpu/BM1684X/AvgPool.cpp)."""
    tensors = graph.tensors
    forward = FORWARD_COPY if chip.avgpool_output_is_input_qtype else FORWARD_COPY - {"AvgPool"}
    index = {t: i for i, t in enumerate(tensors)}
    src_max = np.arange(len(tensors), dtype=np.int32)
    src_min = src_max.copy()
    fac = np.ones(len(tensors), np.float32)
    neg = {t: (True if table_min is None or table_min.get(t) is None else float(table_min[t]) < 0) for t in tensors}
    fixed: dict[str, float] = {}
    for op in graph.ops:  # import-time ranges (ImportCalibration getMinMax)
        for t in op.outputs:
            if op.type == "Sub":  # [-th or -1e-5, th]: always signed, do_relu or not
                neg[t] = True
                continue
            if op.type == "Mul" and len(op.inputs) >= 2 and not op.weights and (len(set(op.inputs)) == 1 or all(
                    graph.producer(x).type in ("Sigmoid", "Relu") for x in op.inputs)):
                neg[t] = False  # [0, th]
            if op.attr("do_relu"):
                neg[t] = False
            if op.type in UNIT_RANGE:
                fixed[t] = 1.0
                neg[t] = False
    outs = set(graph.outputs)

    def keep_sign():
        """KeepSign (AvgPool, MaxPool, Abs: the output takes the input's sign, forwarded to Reshape/Permute users)
        and SetSubConstSign (a SubConst of an unsigned input is signed)."""
        for op in graph.ops:
            if not op.inputs or not op.outputs:
                continue
            t, i = op.outputs[0], op.inputs[0]
            keep = op.type in KEEP_SIGN and not op.attr("do_relu")  # a fused ReLU keeps its output unsigned
            if keep or (op.type in ("Reshape", "Permute") and graph.producer(i).type in KEEP_SIGN
                        and not graph.producer(i).attr("do_relu")):
                neg[t] = neg[i]
            elif op.type == "SubConst" and not neg[i] and not neg[t]:
                neg[t] = True

    keep_sign()
    for op in graph.ops:  # KeepMulSign: two signed inputs make a signed product
        if op.type == "Mul" and len(op.inputs) == 2 and not op.weights:
            a, b = (neg[x] for x in op.inputs)
            if a and b and not neg[op.outputs[0]]:
                neg[op.outputs[0]] = True

    def users(t):
        return [c for c in graph.consumers(t)] + ([None] if t in outs else [])

    def take_range(dst, src, *, lo=True, scale=1.0):
        src_max[index[dst]] = src_max[index[src]]
        fac[index[dst]] = fac[index[src]] * np.float32(abs(scale))
        if lo:
            src_min[index[dst]] = src_min[index[src]]
            neg[dst] = neg[src] or scale < 0
        if scale < 0:  # a negative factor swaps the ends: kept symmetric around the copied max
            src_min[index[dst]] = src_max[index[dst]]

    for op in reversed(graph.ops):
        if not op.inputs or not op.outputs:
            continue
        out = op.outputs[0]
        if op.type in BACKWARD_FULL | BACKWARD_MAX and len(op.inputs) == 1 and users(op.inputs[0]) == [op]:
            take_range(op.inputs[0], out, lo=op.type in BACKWARD_FULL)
        elif op.type in BACKWARD_MULTI and not op.weights and not op.consts:  # a constant input is not calibrated
            ok = all(all(u is op or (u is not None and u.type == "MaxPool") for u in users(t)) for t in op.inputs)
            same_sign = len({neg[t] for t in op.inputs}) == 1
            if ok and same_sign and len(set(op.inputs)) == len(op.inputs):
                for t in op.inputs:
                    take_range(t, out)
    reasons: dict[str, str] = {}
    for op in graph.ops:
        why = int8_support(op, graph, chip)
        if why is not None:
            reasons[op.name] = why
        for t in op.outputs:
            if op.type in forward and op.inputs:
                take_range(t, op.inputs[0])
            elif op.type in SCALED_COPY and op.inputs:
                take_range(t, op.inputs[0], scale=float(op.attr("const_val")))
    keep_sign()
    signed = {t: bool(neg[t]) for t in tensors}
    return QuantPlan(graph, index, src_max, signed, fixed, reasons, src_min, fac, chip)


def plan_from_table(graph: Graph, table, chip: ChipSpec = BM1684) -> QuantPlan:
    """:func:`make_plan` from a :class:`qsens.tables.CaliTable` (every canonical tensor must be present)."""
    from ..tables import check_table_matches

    check_table_matches(table, graph.tensors, getattr(table, "path", None))
    return make_plan(graph, {t: table[t].min for t in graph.tensors}, chip)


def thresholds_from_table(graph: Graph, table) -> np.ndarray:
    missing = [t for t in graph.tensors if t not in table]
    if missing:
        raise TableError(f"calibration table lacks {len(missing)} tensor(s) of the model, e.g. {missing[:3]}")
    return np.array([table[t].threshold for t in graph.tensors], np.float32)


def needs_qparams(plan: QuantPlan, op: Op) -> bool:
    return op.name not in plan.f32_reason and op.type != "Input" and op.type not in PASS_THROUGH


def host_qparams(plan: QuantPlan, op: Op, weights: Mapping[str, Any], th_in: Sequence[float], th_out: float,
                 chip: ChipSpec | None = None) -> dict:
    """:func:`qparams_for` evaluated on the host with NumPy (bit-identical to the traced version, tested):
    the search feeds these to a small compiled kernel instead of compiling the parameter maths per op."""
    from .numerics import host_numpy

    chip = chip or plan.chip
    if not needs_qparams(plan, op):
        return {}
    sig_in = tuple(plan.signed[t] for t in op.inputs)
    w = {k: np.asarray(v) for k, v in weights.items()}
    th_in = tuple(float(t) for t in th_in)
    if op.type in ("Add", "Mul") and op.weights:
        _, th_in, sig_in = _with_weight_operand(op, w, [None] * len(op.inputs), th_in, sig_in, np)
        th_in = tuple(float(t) for t in th_in)
    with host_numpy():
        return qparams_for(op, w, th_in, float(th_out), sig_in, plan.signed[op.outputs[0]], chip,
                           in_shapes=[plan.graph.tensor_shape(t) for t in op.inputs])


def int8_core(plan: QuantPlan, op: Op, weights: Mapping[str, Any], acts: Sequence[Any], th_in: Sequence[Any], th_out,
              chip: ChipSpec | None = None, qp: Mapping[str, Any] | None = None, fallback: bool = True,
              nhwc: bool = False) -> list:
    """The INT8 form of ``op`` on float NCHW inputs: cast F32 -> INT8 with ``th_in`` (effective input
    thresholds), the INT8 kernel with output threshold ``th_out``, cast back.  Ops without an INT8 form (see
    ``plan.f32_reason``) return their float outputs; a threshold-dependent fallback selects the float result.
    ``chip`` defaults to the plan's.  ``nhwc``: a Conv with an INT8 form on a channel-last input, giving a
    channel-last output (the casts are elementwise; see :func:`~qsens.quant.kernels.int8_op`); no float
    fallback then (``fallback=False``)."""
    chip = chip or plan.chip
    if nhwc and (op.name in plan.f32_reason or fallback or op_kind(op) != "Conv"):
        raise ValueError(f"op {op.name!r}: only an INT8 Conv without the float fallback runs NHWC here")
    if op.name in plan.f32_reason:
        return run_op_roles(op, weights, acts)
    if op.type == "Input":
        s = plan.signed[op.outputs[0]]
        return [dequantize(quantize(acts[0], th_out, s), th_out, s)]
    if op.type in FOLLOWS_INPUT_TYPE:
        # top.Reshape takes its input's type in TPU-MLIR's lowering: alone in INT8 between F32 ops it changes
        # nothing (checked: gen_act's Flatten, loss 1e-9 in run_sensitive_layer); on INT8 codes the float form
        # gives the same values
        return run_op_roles(op, weights, acts)
    ins = list(op.inputs)
    sig_in = tuple(plan.signed[t] for t in ins)
    if op.type in ("Add", "Mul") and op.weights:  # a weight operand, quantized per tensor (BM1684/{Add,Mul}.cpp)
        acts, th_in, sig_in = _with_weight_operand(op, weights, acts, th_in, sig_in)
    # an input an F16 / BF16 op produced is cast to INT8 in that float type (a dequantized INT8 input re-quantizes
    # to its own codes either way)
    fts = [plan.float_type if not f32_tensor(plan.graph, t, plan.float_type) else "F32" for t in ins] \
        if plan.float_type != "F32" and len(ins) == len(acts) else ["F32"] * len(acts)
    q = [quantize_from(a, th, s, ft) for a, th, s, ft in zip(acts, th_in, sig_in, fts)]
    if op.type == "Pad":
        return [_int8_pad(op, weights, dequantize(q[0], th_in[0], sig_in[0]), th_in[0], sig_in[0])]
    if op.type in PASS_THROUGH:  # e.g. Permute: a real INT8 op (RNet's permute alone: loss 7.9e-5, as TPU-MLIR)
        return run_op_roles(op, weights, [dequantize(x, th, s) for x, th, s in zip(q, th_in, sig_in)])
    s_out = plan.signed[op.outputs[0]]
    if qp is None:
        qp = qparams_for(op, dict(weights), tuple(th_in), th_out, sig_in, s_out, chip,
                         in_shapes=[plan.graph.tensor_shape(t) for t in ins])
    y = dequantize(int8_op(op, None, q, qp, chip, nhwc=nhwc), th_out, s_out)
    fb = qp.get("fallback") if fallback else None
    if fb is not None:  # threshold-dependent F32 fallback, decided per threshold set (only one branch runs)
        y = jax.lax.cond(jnp.asarray(fb, bool), lambda: run_op_roles(op, weights, acts)[0], lambda: y)
    return [y]


def _with_weight_operand(op: Op, weights, acts, th_in, sig_in, xp=jnp):
    """The operands of an INT8 Add/Mul with a weight, in ONNX order: the weight's threshold is ``max|w|`` and its
    sign the static ``weight_signed`` attribute (TPU-MLIR 1.23: gen_wconst's ``mul5_Mul`` / ``add10_Add``)."""
    xs, ths, sgs = [], [], []
    for kind, ref in op.slots:
        if kind == "act":
            xs.append(acts[ref])
            ths.append(th_in[ref])
            sgs.append(sig_in[ref])
        elif kind == "weight":
            w = weights[ref]
            xs.append(w)
            ths.append(xp.max(xp.abs(w)))
            sgs.append(bool(op.attr("weight_signed")))
    return xs, ths, tuple(sgs)


def _int8_pad(op: Op, weights, x, th, signed: bool):
    """INT8 Pad: codes copied, a constant border filled with the fill value's own code (``pad_value_code``; the
    output takes the input's scale).  Checked against TPU-MLIR 1.23: gen_const's ``pad30_Pad`` (fill 0.5)."""
    value, role = None, None
    if op.attr("mode", "constant") == "constant":
        if len(op.slots) > 2 and op.slots[2][0] == "const":
            role = op.slots[2][1]
            value = float(np.asarray(dict(op.consts)[role]).reshape(-1)[0])
        elif len(op.slots) <= 1:  # opset < 11: attribute
            value = float(op.attr("value", 0.0))
    if not value:
        return run_op_roles(op, weights, [x])[0]
    if role is not None:
        zero = dataclasses.replace(op, consts=tuple((r, np.zeros_like(c) if r == role else c) for r, c in op.consts))
    else:
        zero = dataclasses.replace(op, attrs=tuple((k, 0.0 if k == "value" else v) for k, v in op.attrs))
    inside = run_op_roles(zero, weights, [jnp.ones_like(x)])[0] > 0
    fill = dequantize(pad_value_code(value, th, signed), th, signed)
    return jnp.where(inside, run_op_roles(zero, weights, [x])[0], fill)


def int8_path(plan: QuantPlan, op: Op, weights: Mapping[str, Any], acts: Sequence[Any], th_eff,
              chip: ChipSpec | None = None):
    """:func:`int8_core` with the thresholds read from the effective threshold vector ``th_eff``."""
    idx = plan.tensor_index
    return int8_core(plan, op, weights, acts, [th_eff[idx[t]] for t in op.inputs], th_eff[idx[op.outputs[0]]], chip)


class MixedModel:
    """``apply(params, inputs, thresholds, int8_mask)``: the jit-compiled BM1684 mixed-precision model."""

    def __init__(self, model, plan: QuantPlan, chip: ChipSpec | None = None):
        self.model, self.plan, self.chip = model, plan, chip or plan.chip
        self.graph = plan.graph

    def apply(self, params, inputs, thresholds, int8_mask, *, taps: Sequence[str] = ()):
        """Network outputs by name; with ``taps`` (canonical tensor names) also ``{tensor: value}`` of those
        tensors (dequantized floats for INT8 producers), returned as ``(outputs, tapped)``."""
        g = self.model.graph_at(int(np.shape(next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs)[0]))
        _, env = self.model.input_env(inputs)
        th = self.plan.effective(jnp.asarray(thresholds, jnp.float32))
        mask = jnp.asarray(int8_mask, bool)
        index = {op.name: i for i, op in enumerate(g.ops)}
        # The Input op's mask bit changes nothing: TPU-MLIR casts an input to INT8 in front of each INT8 consumer
        # (with the input's threshold) and F32 consumers read the float input (checked: tests/fixtures/tpu_mlir).

        def mix_fn(op, params_, acts):
            if op.name in self.plan.f32_reason:
                return None
            w = {r: params_[k] for r, k in op.weights}
            return int8_path(self.plan, op, w, acts, th, self.chip), mask[index[op.name]]

        taps = tuple(taps)
        env = run_graph(g, params, env, mix_fn=mix_fn, keep=taps, float_type=self.plan.float_type)
        outs = {name: env[t] for name, t in zip(g.output_names, g.outputs)}
        return (outs, {t: env[t] for t in taps}) if taps else outs
