"""qsens's BM1684X INT8 model against TPU-MLIR 1.23's own BM1684X lowering + interpreter (``int8_bm1684x/`` fixtures).

The fixtures (``tests/fixtures/tpu_mlir/<net>/int8_bm1684x/``, the command in its ``meta.json``) are the BM1684X INT8
model of the BM1684 fixture's own ``cali_table`` (TPU-MLIR's calibration: only the chip differs), run by ``pymlir``
on the same preprocessed samples.  Checked here, with the machinery of the BM1684 oracle
(:func:`tests.tpu_mlir_oracle.int8_codes`):

* every INT8 tensor: storage type, scale and integer codes equal to TPU-MLIR's interpreter, bit for bit;
* the parameters TPU-MLIR wrote into its lowered MLIR (``ops.mlir.txt``): every Conv2D's per-channel multiplier and
  rshift, MatMul's, every Add's multipliers and rshifts and every AvgPool's (multiplier, rshift) equal qsens's.

One documented difference: BM1684X lowers a Softmax to INT8 (a lookup-table kernel, ``tpu.Softmax`` with a table
operand), which qsens does not model and keeps F32 (PNet's ``softmax_Softmax``, an output with no INT8 consumer:
every other tensor is unaffected).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests import tpu_mlir_oracle as O  # noqa: N812

SUB = "int8_bm1684x"
NETS = [n for n in O.available() if (O.FIXTURES / n / SUB / "int8.npz").exists()]
#: tensors TPU-MLIR's BM1684X model keeps INT8 and qsens F32, with the reason
NOT_MODELLED: dict = {}  # (PNet's Softmax, INT8 by table on BM1684X, is modelled since qsens's _softmax_table)


@pytest.fixture(scope="module")
def models():
    import qsens.onnx

    return {n: qsens.onnx.to_jax(str(O.model_path(O.load(n))), O.input_shapes(O.load(n))) for n in NETS}


def test_bm1684x_fixtures_present():
    assert set(NETS) >= {"mtcnn_pnet", "gen_act", "gen_pool", "gen_wconst", "mbv3s", "yolo5n"}


@pytest.mark.parametrize("name", NETS)
def test_bm1684x_int8_model_bit_exact(name, models, zoo):
    """Every quantized tensor of TPU-MLIR's BM1684X INT8 model: storage type, scale and codes."""
    from qsens.quant import BM1684X

    fn, params = models[name]
    fx = O.load(name)
    plan, codes, scales = O.int8_codes(fx, fn.model, params, chip=BM1684X, sub=SUB)
    qinfo = fx.json(SUB, "qinfo.json")
    ref = fx.npz(SUB, "int8.npz")
    checked, skipped = 0, []
    for t in plan.graph.tensors:
        q, op = qinfo[t], plan.graph.producer(t)
        if (name, t) in NOT_MODELLED:
            assert op.name in plan.f32_reason and q["dtype"] in ("I8", "U8"), t
            skipped.append(t)
            continue
        if q["dtype"] not in ("I8", "U8"):  # float in TPU-MLIR's INT8 model: the Input, gen_wconst's F16 Concat
            assert op.type == "Input" or op.name in plan.f32_reason, t
            continue
        assert op.name not in plan.f32_reason, f"{t}: INT8 in TPU-MLIR, F32 in qsens ({plan.f32_reason.get(op.name)})"
        scale, signed = scales[t]
        assert signed == (q["dtype"] == "I8"), t
        assert scale == pytest.approx(q["scale"], rel=1e-6), t
        np.testing.assert_array_equal(codes[t].reshape(ref[t].shape), ref[t].astype(np.int32), err_msg=t)
        checked += 1
    assert checked >= len(plan.graph.tensors) - 2
    assert skipped == [t for (n, t) in NOT_MODELLED if n == name]


def _attr_list(line: str, key: str) -> list[int]:
    m = re.search(rf"\b{key} = \[([^\]]*)\]", line) or re.search(rf"\b{key} = (-?\d+) : si32", line)
    assert m, (key, line[:120])
    return [int(v.split(":")[0]) for v in m[1].split(",")]


def _lowered_params(fx) -> dict[str, dict]:
    """``{op name: {"type", "m": [...], "r": [...]}}`` of the requantizing ops in TPU-MLIR's lowered MLIR."""
    out = {}
    for line in fx.file(SUB, "ops.mlir.txt").read_text().splitlines():
        name = re.search(r'loc\("([^"]+)"\)$', line)[1]
        typ = re.search(r'"tpu\.(\w+)"', line)
        if not typ:
            continue
        typ = typ[1]
        if typ == "Conv2D":
            out[name] = {"type": typ, "m": _attr_list(line, "multiplier"), "r": _attr_list(line, "rshift")}
        elif typ in ("MatMul", "Add"):
            out[name] = {"type": typ, "m": _attr_list(line, "multipliers"), "r": _attr_list(line, "rshifts")}
        elif typ in ("Mul", "SubConst"):
            out[name] = {"type": typ, "m": _attr_list(line, "multiplier"), "r": _attr_list(line, "rshift")}
        elif typ == "Pool2D" and "pool_mode Avg" in line:
            out[name] = {"type": typ, "m": _attr_list(line, "multiplier"), "r": _attr_list(line, "rshift")}
    return out


@pytest.mark.parametrize("name", NETS)
def test_bm1684x_lowered_parameters(name, models, zoo):
    """qsens's multipliers / rshifts (host parameter maths, the ones the search uses) equal those TPU-MLIR wrote.

    The thresholds are the table's values parsed as doubles, as TPU-MLIR parses them: qsens's table reader keeps
    float32 thresholds (docs/bm1684.md, precision policy), which moves ``float(scale_w * s_in / s_out)`` by an ulp
    now and then and with it a 32-bit multiplier (gen_act's conv9_Conv channel 1: (3209599, 30) from the float32
    thresholds, (25075, 23) from the doubles: ``x * 2^30`` is then an exact .5 tie whose rounding up makes every
    ``n >= 23`` equally good); the codes stay bit-exact (test above)."""
    from qsens.quant import BM1684X
    from qsens.quant.mixed import host_qparams, plan_from_table
    from qsens.tables import read_cali_table
    from tests.tpu_mlir_parser import python_parse

    fn, params = models[name]
    fx = O.load(name)
    g = fn.model.graph
    table = read_cali_table(fx.file("cali_table"))
    plan = plan_from_table(g, table, BM1684X)
    rows = python_parse(str(fx.file("cali_table")))[1]
    th = np.asarray(plan.effective(np.array([float(rows[t][0]) for t in g.tensors], np.float64)))
    idx = plan.tensor_index
    theirs = _lowered_params(fx)
    by_out = {op.outputs[0]: op for op in g.ops}
    seen = set()
    for loc, p in theirs.items():
        op = by_out[loc]
        w = {r: np.asarray(params[k]) for r, k in op.weights}
        qp = host_qparams(plan, op, w, [th[idx[t]] for t in op.inputs], th[idx[op.outputs[0]]])
        assert np.ravel(qp["m"]).tolist() == p["m"], (loc, p["type"])
        assert np.ravel(qp["r"]).tolist() == p["r"], (loc, p["type"])
        seen.add(p["type"])
    assert "Conv2D" in seen


#: gen_const's BM1684X ops checked one by one (each on TPU-MLIR's own input codes; ``int8_bm1684x_ops/``): SubConst
#: (multiplier + shift of s_in / s_out, constant RHAZ(c / s_out) * 2^r), the BatchNormalization Scale as a depthwise
#: 1x1 Conv2D (per-channel multipliers), the HardSigmoid / Exp / Tanh tables, the convs, the ReduceMean pool and the
#: Concat (its three inputs requantized, TPU-MLIR's MulShift), the Deconv with its fused ReLU (an int32 tpu.Deconv,
#: then RequantIntAxis: per-channel multipliers, half away from zero).  Not end to end: TPU-MLIR's BM1684X lowering
#: merges mul51_Mul's Scale into the conv before it (qsens keeps the two ops)
OPS_CHECKED = {"gen_const": ["conv3_Conv", "sub5_Sub", "batchnormalization16_BatchNormalization",
                             "hardsigmoid17_HardSigmoid", "conv20_Conv", "exp21_Exp", "conv28_Conv", "conv33_Conv",
                             "conv36_Conv", "reducemean37_ReduceMean", "tanh38_Tanh", "relu42_Relu", "concat52_Concat",
                             "conv55_Conv"],
               # fpn: convs, Adds, LeakyRelu, the nearest Upsample, two Deconvs (no ReLU: RequantIntAxis's
               # half away from zero on negative accumulators), the Softplus / Tanh tables and an activation x
               # activation Mul; not end to end: its bilinear Resize is F16 in TPU-MLIR and the codes after it drift
               "fpn": ["/c1/c1.2/Relu_output_0_Relu", "/c2/c2.2/Relu_output_0_Relu", "/c3/c3.2/Relu_output_0_Relu",
                       "/l3/Conv_output_0_Conv", "/l2/Conv_output_0_Conv", "/Add_output_0_Add",
                       "/s2/s2.0/Conv_output_0_Conv", "/s2/s2.2/LeakyRelu_output_0_LeakyRelu", "/l1/Conv_output_0_Conv",
                       "/Resize_1_output_0_Resize", "/Add_1_output_0_Add", "/up/ConvTranspose_output_0_ConvTranspose",
                       "71_ConvTranspose", "/Softplus_output_0_Softplus", "/Tanh_output_0_Tanh", "/Mul_output_0_Mul",
                       "98_Conv", "99_Tanh"]}


@pytest.mark.parametrize("name", sorted(OPS_CHECKED))
def test_bm1684x_ops_on_tpu_mlir_inputs(name):
    """Each BM1684X INT8 op qsens models, run on TPU-MLIR's own input codes, gives TPU-MLIR's output codes."""
    import qsens.onnx
    from qsens.quant import BM1684X
    from qsens.quant.kernels import int8_op
    from qsens.quant.mixed import host_qparams, plan_from_table, thresholds_from_table
    from qsens.tables import read_cali_table

    fx = O.load(name)
    sub = "int8_bm1684x_ops"
    fn, params = qsens.onnx.to_jax(str(O.model_path(fx)), O.input_shapes(fx))
    g = fn.model.graph
    table = read_cali_table(fx.file("cali_table"))
    plan = plan_from_table(g, table, BM1684X)
    eff = np.asarray(plan.effective(thresholds_from_table(g, table)))
    idx = plan.tensor_index
    ref, qinfo = fx.npz(sub, "int8.npz"), fx.json(sub, "qinfo.json")
    checked = []
    for op in g.ops:
        t = op.outputs[0]
        if op.type in ("Input", "Pad") or op.name in plan.f32_reason or qinfo.get(t, {}).get("dtype") not in ("I8", "U8"):
            continue
        keys = [f"{x}{op.name}_si8" if f"{x}{op.name}_si8" in ref else x for x in op.inputs]  # a cast in front
        if any(k not in ref or qinfo[k]["dtype"] not in ("I8", "U8") for k in keys):
            continue
        xs = [ref[k].astype(np.int32).reshape((-1,) + ref[k].shape[2:]) for k in keys]
        w = {r: params[k] for r, k in op.weights}
        qp = host_qparams(plan, op, w, [float(eff[idx[x]]) for x in op.inputs], float(eff[idx[t]]))
        y = np.asarray(int8_op(op, None, xs, qp, BM1684X))
        np.testing.assert_array_equal(y, ref[t].astype(np.int32).reshape(y.shape), err_msg=op.name)
        checked.append(op.name)
    assert checked == OPS_CHECKED[name]
