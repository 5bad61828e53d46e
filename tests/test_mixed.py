"""The BM1684 mixed-precision model (``qsens.quant.mixed``): dynamic masks and thresholds, vmap, no retrace,
all-F32 / all-INT8 limits, and EfficientNet-Lite0 with MAX thresholds on the real images.

Issue "BM1684 INT8 arithmetic", items 3-5.  The small model is generated here (onnx.helper); its INT8 limit is
checked against an independent integer pipeline that carries int32 codes from op to op (``qparams_for`` +
``int8_op``, no dequantize/re-quantize in between), so the mixed model's "floats that are dequantized codes
re-quantize exactly" design is checked, not assumed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from onnx import helper

from qsens.onnx import to_jax
from qsens.quant import BM1684, dequantize, int8_op, qparams_for, quantize
from qsens.quant.mixed import PASS_THROUGH, MixedModel, make_plan, plan_from_table, thresholds_from_table
from tests.onnx_builders import init, make_model, vi

N = 4  # images per call
K = 8  # (thresholds, mask) pairs per vmapped call
QP = jax.jit(qparams_for, static_argnums=(0, 4, 5, 6, 7))


def small_model(seed: int = 0):
    """x -> Conv3x3+Relu -> {depthwise Conv3x3, Conv1x1} -> Add -> AveragePool 2x2 -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    C, O = 4, 8
    inits = [
        init("w1", rng.standard_normal((O, C, 3, 3)).astype(np.float32) * 0.3),
        init("b1", rng.standard_normal(O).astype(np.float32) * 0.1),
        init("wd", rng.standard_normal((O, 1, 3, 3)).astype(np.float32) * 0.4),
        init("bd", rng.standard_normal(O).astype(np.float32) * 0.1),
        init("w2", rng.standard_normal((O, O, 1, 1)).astype(np.float32) * 0.3),
        init("fw", rng.standard_normal((10, O * 16)).astype(np.float32) * 0.2),
        init("fb", rng.standard_normal(10).astype(np.float32) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], pads=[1, 1, 1, 1], group=O),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Add", ["d1", "c2"], ["a1"]),
        helper.make_node("AveragePool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "fw", "fb"], ["y"], transB=1),
    ]
    return make_model(nodes, [vi("x", ["N", C, 8, 8])], [vi("y", ["N", 10])], inits)


@pytest.fixture(scope="module")
def small():
    fn, params = to_jax(small_model())
    g = fn.graph
    assert [op.type for op in g.ops] == ["Input", "Conv", "Conv", "Conv", "Add", "AvgPool", "Reshape", "MatMul"]
    x = np.random.default_rng(1).uniform(-1, 1, (N, 4, 8, 8)).astype(np.float32)
    y_float, acts = jax.jit(fn, static_argnames="taps")(params, x, taps=tuple(g.tensors))
    acts = {t: np.asarray(v) for t, v in acts.items()}
    # table mins: data mins, except c2_Conv declared unsigned (min 0) although it has negative values, so a
    # non-ReLU uint8 tensor (clamped at 0) is exercised too
    mins = {t: float(a.min()) for t, a in acts.items()}
    mins["c2_Conv"] = 0.0
    plan = make_plan(g, mins)
    absmax = np.array([np.abs(acts[t]).max() for t in g.tensors], np.float32)
    mm = MixedModel(fn.model, plan)
    return dict(fn=fn, params=params, g=g, x=x, y=np.asarray(y_float["y"]), acts=acts, plan=plan, absmax=absmax,
                mm=mm)


def test_small_plan(small):
    plan, g = small["plan"], small["g"]
    assert plan.f32_reason == {}
    assert plan.int8_ops == [op.name for op in g.ops]
    assert plan.signed == {"x": True, "r1_Relu": False, "d1_Conv": True, "c2_Conv": False, "a1_Add": True,
                           "p1_AveragePool": True, "f1_Flatten": True, "y_Gemm": True}
    # copy map: AvgPool and Flatten outputs take the Add's threshold (spec §3.2, BM1684)
    idx = plan.tensor_index
    assert plan.copy_src[idx["p1_AveragePool"]] == idx["a1_Add"]
    assert plan.copy_src[idx["f1_Flatten"]] == idx["a1_Add"]
    th = np.arange(1, len(g.tensors) + 1, dtype=np.float32)
    eff = plan.effective(th)
    assert eff[idx["f1_Flatten"]] == th[idx["a1_Add"]]
    np.testing.assert_array_equal(np.asarray(plan.effective(jnp.asarray(th))), eff)


def _random_cases(small, seed=2):
    g, absmax = small["g"], small["absmax"]
    rng = np.random.default_rng(seed)
    th = (absmax[None, :] * rng.uniform(0.5, 1.5, (K, len(g.tensors)))).astype(np.float32)
    masks = rng.random((K, len(g.ops))) < 0.6
    masks[0] = True  # the INT8 model
    masks[1] = False  # the float model
    masks[2, :] = False
    masks[2, [1, 3, 4]] = True  # interior INT8 island
    assert (masks[3:].sum(1) >= 2).all()  # several ops INT8 at once
    return th, masks


def test_vmapped_equals_looped(small):
    """vmap over (thresholds, mask) == a Python loop of single jitted calls.

    INT8 output (last op INT8): bit-exact (the output is codes * float32(s), compared exactly and checked to lie
    on the code grid); F32 output: within 1e-6 relative.
    """
    mm, params, x, g, plan = small["mm"], small["params"], small["x"], small["g"], small["plan"]
    th, masks = _random_cases(small)

    def one(t, m):
        return mm.apply(params, x, t, m)["y"]

    batched = np.asarray(jax.jit(jax.vmap(one))(th, masks))
    single = jax.jit(one)
    last = len(g.ops) - 1
    out_t = g.outputs[0]
    n_exact = 0
    for k in range(K):
        want = np.asarray(single(th[k], masks[k]))
        assert batched[k].shape == want.shape == (N, 10)
        if masks[k, last]:
            np.testing.assert_array_equal(batched[k], want, err_msg=f"case {k} (INT8 output)")
            # the output is dequantized codes: on the grid of s = th_eff/127 (MatMul never falls back)
            th_out = plan.effective(th[k])[plan.tensor_index[out_t]]
            codes = np.asarray(quantize(want, th_out, plan.signed[out_t]))
            np.testing.assert_array_equal(np.asarray(dequantize(codes, th_out, plan.signed[out_t])), want)
            n_exact += 1
        else:
            scale = np.abs(want).max()
            np.testing.assert_allclose(batched[k], want, rtol=0, atol=1e-6 * scale, err_msg=f"case {k} (F32 output)")
    assert 2 <= n_exact < K  # both kinds of cases were compared


def test_no_retrace_on_new_thresholds_or_masks(small):
    mm, params, x = small["mm"], small["params"], small["x"]
    th, masks = _random_cases(small, seed=3)
    traces = []

    def f(t, m):
        traces.append(1)
        return mm.apply(params, x, t, m)["y"]

    jf = jax.jit(f)
    outs = [np.asarray(jf(th[k], masks[k])) for k in range(K)]
    outs.append(np.asarray(jf(jnp.asarray(th[0] * 1.25), jnp.asarray(masks[3]))))  # jax arrays: same signature
    assert len(traces) == 1
    assert len({o.tobytes() for o in outs}) > K // 2  # and the calls really computed different things


def test_all_zeros_mask_is_float_model(small):
    """All-zeros mask == float model within 1e-6 relative.

    Not asserted bitwise: the mixed model is a different XLA program (the ``where(mask, int8, float)`` selects
    add INT8 branches next to every float op), and XLA CPU fuses/vectorizes the float convolutions, bias adds and
    reductions of the two programs differently, which may change the last float32 bit (on the 2-core CPU this
    model happens to come out bit-identical; that is not part of the contract).
    """
    mm, params, x, g, absmax = small["mm"], small["params"], small["x"], small["g"], small["absmax"]
    y = np.asarray(jax.jit(mm.apply)(params, x, absmax, np.zeros(len(g.ops), bool))["y"])
    ref = small["y"]
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def integer_pipeline(small, th):
    """Independent INT8 model: int32 codes flow from op to op (no float in between); returns float outputs."""
    g, plan, params = small["g"], small["plan"], small["params"]
    eff = plan.effective(np.asarray(th, np.float32))
    idx = plan.tensor_index
    codes = {}
    for op in g.ops:
        t = op.outputs[0]
        if op.type == "Input":
            codes[t] = quantize(small["x"], eff[idx[t]], plan.signed[t])
        elif op.type in PASS_THROUGH:
            assert eff[idx[t]] == eff[idx[op.inputs[0]]] and plan.signed[t] == plan.signed[op.inputs[0]]
            codes[t] = jnp.reshape(codes[op.inputs[0]], (N,) + tuple(op.out_shapes[0][1:]))
        else:
            w = {r: params[k] for r, k in op.weights}
            qp = QP(op, w, tuple(jnp.float32(eff[idx[i]]) for i in op.inputs), jnp.float32(eff[idx[t]]),
                    tuple(plan.signed[i] for i in op.inputs), plan.signed[t], BM1684,
                    tuple(tuple(g.tensor_shape(i)) for i in op.inputs))
            assert not bool(qp["fallback"]), op.name
            codes[t] = int8_op(op, None, [codes[i] for i in op.inputs], qp)
    t = g.outputs[0]
    return np.asarray(dequantize(codes[t], eff[idx[t]], plan.signed[t])), {k: np.asarray(v) for k, v in codes.items()}


def test_all_ones_mask_is_int8_model(small):
    mm, params, x, g, absmax = small["mm"], small["params"], small["x"], small["g"], small["absmax"]
    apply = jax.jit(mm.apply)
    ones = np.ones(len(g.ops), bool)
    th = absmax * np.float32(1.1)
    y = np.asarray(apply(params, x, th, ones)["y"])
    ref, codes = integer_pipeline(small, th)
    np.testing.assert_array_equal(y, ref)
    assert not np.allclose(y, small["y"], rtol=0, atol=1e-6)  # it is not the float model ...
    # ... and with honest signedness (c2_Conv signed) a close approximation of it
    honest = make_plan(g, {t: float(a.min()) for t, a in small["acts"].items()})
    y_honest = np.asarray(jax.jit(MixedModel(small["fn"].model, honest).apply)(params, x, th, ones)["y"])
    assert np.corrcoef(y_honest.ravel(), small["y"].ravel())[0, 1] > 0.99
    # uint8 tensors: ReLU output and the declared-unsigned c2_Conv (clamped at 0); signed ones reach negatives
    assert codes["r1_Relu"].min() >= 0 and codes["r1_Relu"].max() > 127
    assert codes["c2_Conv"].min() == 0
    assert codes["d1_Conv"].min() < 0

    # a threshold change changes the INT8 output ...
    idx = small["plan"].tensor_index
    for t in ("x", "r1_Relu", "a1_Add", "y_Gemm"):
        th2 = th.copy()
        th2[idx[t]] *= np.float32(1.5)
        y2 = np.asarray(apply(params, x, th2, ones)["y"])
        assert not np.array_equal(y2, y), t
        np.testing.assert_array_equal(y2, integer_pipeline(small, th2)[0])
    # ... except for tensors whose threshold is copied from their input (AvgPool / Flatten outputs, §3.2)
    for t in ("p1_AveragePool", "f1_Flatten"):
        th2 = th.copy()
        th2[idx[t]] *= np.float32(1.5)
        np.testing.assert_array_equal(np.asarray(apply(params, x, th2, ones)["y"]), y)


def fallback_model(seed: int = 0):
    """x -> Conv -> Clip(-0.5, 0.5) -> GlobalAveragePool -> Flatten -> Gemm: the Clip stays F32 on BM1684."""
    rng = np.random.default_rng(seed)
    inits = [
        init("w1", rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3),
        init("b1", rng.standard_normal(6).astype(np.float32) * 0.1),
        init("lo", np.array(-0.5, np.float32)),
        init("hi", np.array(0.5, np.float32)),
        init("fw", rng.standard_normal((4, 6)).astype(np.float32) * 0.3),
    ]
    nodes = [
        # the Conv has a bias: onnxsim would fuse Add(constant) into a bias-less Conv (fuse_add_bias_into_conv)
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"]),  # BM1684: F32 (MaxConst + MinConst)
        helper.make_node("GlobalAveragePool", ["a1"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["f1"]),
        helper.make_node("Gemm", ["f1", "fw"], ["y"], transB=1),
    ]
    return make_model(nodes, [vi("x", ["N", 3, 6, 6])], [vi("y", ["N", 4])], inits)


def test_fallback_ops_are_listed_and_ignore_their_mask_bit():
    from qsens.tables import CaliTable

    fn, params = to_jax(fallback_model())
    g = fn.graph
    x = np.random.default_rng(5).uniform(-1, 1, (N, 3, 6, 6)).astype(np.float32)
    yf, acts = jax.jit(fn, static_argnames="taps")(params, x, taps=tuple(g.tensors))
    table = CaliTable({t: (float(np.abs(a).max()), float(a.min()), float(a.max())) for t, a in acts.items()})
    plan = plan_from_table(g, table)
    th = thresholds_from_table(g, table)
    add = next(op.name for op in g.ops if op.type == "Clip")
    assert set(plan.f32_reason) == {add}
    assert plan.f32_reason[add] == "Clip with a non-zero lower bound is lowered to F32 on BM1684 (MaxConst + MinConst)"
    assert add not in plan.int8_ops and len(plan.int8_ops) == len(g.ops) - 1
    apply = jax.jit(MixedModel(fn.model, plan).apply)
    ones = np.ones(len(g.ops), bool)
    flip = ones.copy()
    flip[g.index(add)] = False
    y1 = np.asarray(apply(params, x, th, ones)["y"])
    y2 = np.asarray(apply(params, x, th, flip)["y"])
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, np.asarray(yf["y"]))


# ------------------------------------------------------------------------------------------ EfficientNet-Lite0
@pytest.mark.zoo
def test_efficientnet_lite0_int8_max(zoo):
    from qsens import metrics
    from qsens.calibrate import calibrate
    from qsens.data.dataset import select_files
    from qsens.pipeline import load_inputs, make_preprocess, preset_for_model
    from qsens.tables import CaliTable

    path = str(zoo / "efficientnet_lite0.onnx")
    fn, params = to_jax(path)
    g = fn.graph
    pp = make_preprocess(g, preset=preset_for_model(path))
    cal_files = select_files(dataset=str(zoo / "images100"), input_num=16)
    cal = calibrate(fn.model, cal_files, pp, methods=("max",), tune_num=0, progress=False)
    table = CaliTable(cal.table_entries("max", True))
    plan = plan_from_table(g, table)
    th = thresholds_from_table(g, table)

    types = [op.type for op in g.ops]
    assert (types.count("Conv"), types.count("Add"), types.count("AvgPool"), types.count("MatMul")) == (47, 9, 1, 1)
    compute = [op.name for op in g.ops if op.type != "Input" and op.type not in PASS_THROUGH]
    int8_compute = [n for n in plan.int8_ops if g.op(n).type != "Input" and g.op(n).type not in PASS_THROUGH]
    assert set(plan.f32_reason) <= set(compute)
    assert all(isinstance(r, str) and r for r in plan.f32_reason.values())
    assert sorted(set(plan.int8_ops) | set(plan.f32_reason)) == sorted(op.name for op in g.ops)
    assert len(int8_compute) == 47 + 9 + 1 + 1 - len(plan.f32_reason)
    assert plan.f32_reason == {}  # BM1684 has an INT8 form of every Lite0 compute op
    # ... and no threshold-dependent fallback (Conv rshift < 0, Add multiplier < 0) fires at MAX thresholds,
    # so the all-ones mask really runs all 58 compute ops in INT8
    eff, idx = plan.effective(th), plan.tensor_index
    dyn = []
    for name in int8_compute:
        op = g.op(name)
        qp = QP(op, {r: params[k] for r, k in op.weights}, tuple(jnp.float32(eff[idx[t]]) for t in op.inputs),
                jnp.float32(eff[idx[name]]), tuple(plan.signed[t] for t in op.inputs), plan.signed[name], BM1684,
                tuple(tuple(g.tensor_shape(t)) for t in op.inputs))
        if bool(qp["fallback"]):
            dyn.append(name)
    assert dyn == []
    print(f"\nLite0: {len(int8_compute)} INT8 compute ops, F32 ops: {plan.f32_reason or 'none'}")

    x = load_inputs([str(p) for p in sorted((zoo / "images").iterdir())], g, pp)
    ref = {k: np.asarray(v) for k, v in jax.jit(fn)(params, x).items()}
    y8 = {k: np.asarray(v) for k, v in jax.jit(MixedModel(fn.model, plan).apply)(params, x, th,
                                                                                 np.ones(len(g.ops), bool)).items()}
    r, q = next(iter(ref.values())), next(iter(y8.values()))
    top1 = float(np.mean(r.argmax(1) == q.argmax(1)))
    sim = float(metrics.similarity(ref, y8).mean())
    cos = float(metrics.plain_cosine(ref, y8).mean())
    print(f"Lite0 INT8 (MAX, {len(cal_files)} calibration images) vs FP32 on {r.shape[0]} images: "
          f"similarity (0.5+0.5cos) {sim:.4f}, plain cosine {cos:.4f}, top-1 agreement {top1:.3f}")
    assert 0.6 <= top1 <= 0.98
    assert 0.5 < cos < 0.99
    assert sim == pytest.approx(0.5 + 0.5 * cos, abs=1e-5)
