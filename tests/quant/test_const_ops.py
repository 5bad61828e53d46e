"""BM1684 INT8 of the ops issue 12 added (AddConst, SubConst, MulConst, Deconv, Upsample, Pad fill, Exp / Softplus /
HardSwish / HardSigmoid tables): every kernel vs the independent oracle (hypothesis, bit-exact), and the parameters
TPU-MLIR 1.23 wrote into its lowered INT8 models of the reference nets (tests/fixtures/tpu_mlir)."""

import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quant_oracle as O
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsens.onnx.ir import Op, freeze_attrs
from qsens.quant import int8_op, qparams_for
from qsens.quant.kernels import dequantize, pad_value_code

SET = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
QP = jax.jit(qparams_for, static_argnums=(0, 4, 5))
RUN = jax.jit(int8_op, static_argnums=(0,))
ths = st.one_of(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 3.0]), st.floats(0.0625, 40.0, width=32))
consts = st.one_of(st.sampled_from([0.5, -0.5, 0.25, 1.5, 3.0, 1 / 6, -2.0]), st.floats(-8, 8, width=32))


def mkop(t, n=1, w=(), **a):
    return Op("y", t, tuple(f"x{i}" for i in range(n)), ("y",), tuple((r, r) for r in w), freeze_attrs(a))


def codes(draw, shape, signed):
    lo, hi = (-128, 127) if signed else (0, 255)
    return np.array(draw(st.lists(st.integers(lo, hi), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
                    ).reshape(shape).astype(np.int32)


@pytest.mark.parametrize("kind", ["AddConst", "SubConst", "MulConst"])
def test_const_ops_match_oracle(kind):
    cnt = Counter()

    @SET
    @given(st.data())
    def run(data):
        sin, sout = data.draw(st.booleans()), data.draw(st.booleans())
        c = float(np.float32(data.draw(consts)))
        if kind == "MulConst" and c == 0:
            c = 1.0
        th_in = float(np.float32(data.draw(ths)))
        pick = data.draw(st.sampled_from(["same_scale", "tiny", "any", "any"]))
        if pick == "same_scale":  # MulConst's forward copy: th_out = th_in * |c|
            th_out = float(np.float32(th_in * (abs(c) if kind == "MulConst" else 1.0)))
        elif pick == "tiny":  # s_in / s_out > 127: a negative rshift (clamped to 0 except in SubConst)
            th_out = float(np.float32(th_in / 300))
        else:
            th_out = float(np.float32(data.draw(ths)))
        relu = kind == "SubConst" and data.draw(st.booleans())
        q = codes(data.draw, (1, 2, 3, 3), sin)
        attrs = dict(const_val=c, do_relu=relu)
        if kind == "SubConst":
            attrs["is_reverse"] = True
        op = mkop(kind, **attrs)
        qp = QP(op, {}, (jnp.float32(th_in),), jnp.float32(th_out), sin, sout)
        exp, info = O.const_op(kind, q, c, th_in, th_out, sin, sout, do_relu=relu)
        assert int(qp["r"]) == info["r"] and int(qp["m"]) == info["m"]
        if kind != "MulConst":
            assert int(qp["c"]) == info["c"]
        got = np.asarray(RUN(op, None, [jnp.asarray(q)], qp))
        assert got.tolist() == exp.tolist()
        cnt["negative_r"] += info["r"] < 0
        cnt["saturated"] += bool(np.any((exp == 127) | (exp == (-128 if sout else 255))))
        cnt["uint8_out"] += not sout

    run()
    assert cnt["saturated"] and cnt["uint8_out"], cnt
    if kind == "SubConst":
        assert cnt["negative_r"], cnt  # SubConst keeps a negative rshift (a left shift)


DECONV_CFG = [
    dict(shape=(1, 3, 3, 3), O=2, k=(2, 2), s=(2, 2), p=(0, 0, 0, 0), g=1),
    dict(shape=(1, 2, 3, 3), O=3, k=(4, 4), s=(2, 2), p=(1, 1, 1, 1), g=1),
    dict(shape=(1, 4, 2, 3), O=2, k=(3, 3), s=(1, 1), p=(1, 0, 1, 0), g=2),
]


def _deconv_case(cfg, sin, relu, sout, W, b, th_in, th_out, q) -> str:
    """One Deconv case checked against the oracle; its kind: fallback (r < 0), u8_capped_at_127 or plain."""
    op = mkop("Deconv", 1, ("filter", "bias"), kernel_shape=cfg["k"], strides=cfg["s"], pads=cfg["p"],
              group=cfg["g"], do_relu=relu, relu_limit=-1.0)
    qp = QP(op, {"filter": W, "bias": b}, (jnp.float32(th_in),), jnp.float32(th_out), sin, sout)
    exp, low = O.deconv(q, W, b, th_in, th_out, sin, sout, cfg["s"], cfg["p"], cfg["g"], relu)
    assert bool(qp["fallback"]) == (low["r0"] < 0)
    if low["r0"] < 0:
        return "fallback"
    assert int(qp["r"]) == low["r"] and np.array_equal(np.asarray(qp["w8"]), low["w8"])
    got = np.asarray(RUN(op, None, [jnp.asarray(q)], qp))
    assert got.tolist() == exp.tolist()
    return "u8_capped_at_127" if relu and np.any(exp == 127) else "plain"


def test_deconv_matches_oracle():
    cnt = Counter()

    @SET
    @given(st.data())
    def run(data):
        cfg = data.draw(st.sampled_from(DECONV_CFG))
        sin, relu = data.draw(st.booleans()), data.draw(st.booleans())
        sout = not relu and data.draw(st.booleans())  # a fused ReLU gives an unsigned output
        C = cfg["shape"][1]
        W = np.array(data.draw(st.lists(st.floats(-2, 2, width=32), min_size=C * cfg["O"] * 16,
                                        max_size=C * cfg["O"] * 16)), np.float32)[: C * cfg["O"] * int(np.prod(cfg["k"]))]
        W = W.reshape((C, cfg["O"]) + cfg["k"]) * data.draw(st.sampled_from([1.0, 0.01, 300.0]))  # 300: r < 0
        b = np.array(data.draw(st.lists(st.floats(-3, 3, width=32), min_size=cfg["O"] * cfg["g"],
                                        max_size=cfg["O"] * cfg["g"])), np.float32)
        th_in, th_out = float(np.float32(data.draw(ths))), float(np.float32(data.draw(ths)))
        cnt[_deconv_case(cfg, sin, relu, sout, W, b, th_in, th_out, codes(data.draw, cfg["shape"], sin))] += 1

    run()
    # the two kinds of case the test is about, whatever hypothesis drew (it drew no capped case in one CI run):
    # seeded NumPy draws, stopped at the first of each kind (deterministic)
    rng = np.random.default_rng(0)
    for _ in range(400):
        if cnt["fallback"] and cnt["u8_capped_at_127"]:
            break
        cfg = DECONV_CFG[int(rng.integers(len(DECONV_CFG)))]
        C, n = cfg["shape"][1], cfg["O"] * int(np.prod(cfg["k"]))
        sin, relu = bool(rng.integers(2)), bool(rng.integers(2))
        W = (rng.uniform(-2, 2, (C, n)).astype(np.float32) * np.float32(rng.choice([1.0, 0.01, 300.0])))
        b = rng.uniform(-3, 3, cfg["O"] * cfg["g"]).astype(np.float32)
        lo, hi = (-128, 127) if sin else (0, 255)
        q = rng.integers(lo, hi + 1, cfg["shape"]).astype(np.int32)
        th_in, th_out = float(np.float32(rng.uniform(0.0625, 40))), float(np.float32(rng.uniform(0.0625, 4)))
        cnt[_deconv_case(cfg, sin, relu, False, W.reshape((C, cfg["O"]) + cfg["k"]), b, th_in, th_out, q)] += 1
    assert cnt["fallback"] and cnt["u8_capped_at_127"], cnt


def test_upsample_repeats_codes():
    q = np.arange(-6, 6, dtype=np.int32).reshape(1, 2, 2, 3)
    op = mkop("Upsample", scale_h=2, scale_w=3)
    qp = qparams_for(op, {}, (4.0,), 4.0, True, True)
    got = np.asarray(int8_op(op, None, [q], qp))
    assert got.shape == (1, 2, 4, 9)
    assert got[0, 1, 3].tolist() == [3, 3, 3, 4, 4, 4, 5, 5, 5] and got[0, 0, 0, 3] == -5


def test_pad_fill_code_is_the_rounded_fill_value():
    # BM1684/Pad.cpp: std::round(val / s_in) -- half away from zero, saturated
    s = 8.0 / 127
    assert int(pad_value_code(0.5, 8.0, True)) == round(0.5 / s) == 8
    assert int(pad_value_code(-2.5 * s, 8.0, True)) == -3  # a tie rounds away from zero
    assert int(pad_value_code(100.0, 8.0, True)) == 127 and int(pad_value_code(-1.0, 8.0, False)) == 0
    # the gen_const net: fill 0.5 at the Pad input's scale 0.0628969818 -> code 8 -> 0.50317585 (TPU-MLIR's dump)
    th = 0.0628969818353653 * 127
    assert float(dequantize(pad_value_code(0.5, th, True), th, True)) == pytest.approx(0.50317585, abs=1e-7)


LUT_FNS = {
    "Exp": math.exp,
    "Softplus": lambda x: math.log1p(math.exp(x)),
    "HardSwish": lambda x: x * min(max(x + 3.0, 0.0), 6.0) / 6.0,
    "HardSigmoid": lambda x: min(max(float(np.float32(0.2)) * x + 0.5, 0.0), 1.0),
}


@pytest.mark.parametrize("kind", sorted(LUT_FNS))
@pytest.mark.parametrize("th_in,th_out,sin,sout", [(4.0, 30.0, True, False), (2.5, 1.0, True, True),
                                                    (6.0, 6.0, False, False)])
def test_lut_tables_match_the_formula(kind, th_in, th_out, sin, sout):
    op = mkop(kind, alpha=0.2, beta=0.5) if kind == "HardSigmoid" else mkop(kind)
    qp = qparams_for(op, {}, (th_in,), th_out, sin, sout)
    exp = O.lut(LUT_FNS[kind], th_in, th_out, sin, sout)
    lo = -128 if sin else 0
    assert {lo + i: int(v) for i, v in enumerate(np.asarray(qp["lut"]))} == exp


# parameters TPU-MLIR 1.23 wrote into the lowered INT8 MLIR of the reference nets (mlir_lowering with the fixture's
# cali_table; reference/tpu_mlir/run.py --steps dump --keep_mlir), with the thresholds qsens derives from that table
LOWERED = [
    ("mbv3s", "/Sub_output_0_Sub", dict(c=-3261, m=102, r=7)),  # tpu.AddConst (Sub of 0.25)
    ("mbv3s", "/Mul_output_0_Mul", dict(m=64, r=6)),  # tpu.MulConst (x 1.5)
    ("gen_const", "sub5_Sub", dict(c=1960, m=124, r=7)),  # tpu.SubConst (0.5 - x)
    ("gen_const", "relu42_Relu", dict(r=7)),  # tpu.Deconv 2x2 s2 with fused ReLU
    ("fpn", "/up/ConvTranspose_output_0_ConvTranspose", dict(r=7)),  # tpu.Deconv 2x2 s2
    ("fpn", "71_ConvTranspose", dict(r=9)),  # tpu.Deconv 4x4 s2 p1, no bias
]


@pytest.mark.parametrize("name,op_name,expected", LOWERED, ids=[f"{a}:{b}" for a, b, _ in LOWERED])
def test_parameters_equal_tpu_mlir_lowering(name, op_name, expected):
    import qsens.onnx
    from qsens.quant.mixed import host_qparams, plan_from_table, thresholds_from_table
    from qsens.tables import read_cali_table
    from tests import tpu_mlir_oracle as TO

    fx = TO.load(name)
    fn, params = qsens.onnx.to_jax(str(TO.model_path(fx)))
    g = fn.model.graph
    table = read_cali_table(fx.file("cali_table"))
    plan = plan_from_table(g, table)
    th = plan.effective(thresholds_from_table(g, table))
    op = g.ops[g.index(op_name)]
    idx = plan.tensor_index
    qp = host_qparams(plan, op, {r: params[k] for r, k in op.weights}, [th[idx[t]] for t in op.inputs],
                      th[idx[op.outputs[0]]])
    assert {k: int(np.asarray(qp[k])) for k in expected} == expected


def test_addconst_research_vector():
    # c = 0.75, th_in 3.9990849 (int8), th_out 4.7286 (int8): TPU-MLIR 1.23 wrote r 7, multiplier 108, const 2578
    qp = qparams_for(mkop("AddConst", const_val=0.75), {}, (3.9990849,), 4.7286, True, True)
    assert (int(qp["r"]), int(qp["m"]), int(qp["c"])) == (7, 108, 2578)
