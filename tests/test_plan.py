"""TPU-MLIR's calibration post-processing (spec §3.2) as the static copy map of the quantization plan."""

import numpy as np
import pytest
from onnx import helper

from qsens.onnx import to_jax
from qsens.quant.mixed import make_plan
from tests.onnx_builders import init, make_model, vi


def _model():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
        helper.make_node("MaxPool", ["p"], ["m"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["m", "w2"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["m", "w3"], ["c3"], name="conv3"),
        helper.make_node("Concat", ["c2", "c3"], ["cat"], name="cat", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["y"], name="rs"),
    ]
    inits = [init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("slope", np.full((4, 1, 1), 0.1, np.float32)),
             init("w2", rng.standard_normal((2, 4, 1, 1)).astype(np.float32)),
             init("w3", rng.standard_normal((2, 4, 1, 1)).astype(np.float32)),
             init("shape", np.array([1, -1], np.int64))]
    return make_model(nodes, [vi("x", [1, 3, 10, 10])], [vi("y", None)], inits)


def test_backward_and_forward_copies():
    fn, _ = to_jax(_model())
    g = fn.graph
    names = g.tensors
    assert names == ("x", "c_Conv", "p_PRelu", "m_MaxPool", "c2_Conv", "c3_Conv", "cat_Concat", "y_Reshape")
    mins = {"x": -1.0, "c_Conv": -3.0, "p_PRelu": -0.3, "m_MaxPool": -0.2, "c2_Conv": -1.0, "c3_Conv": -2.0,
            "cat_Concat": -2.0, "y_Reshape": -2.0}
    plan = make_plan(g, mins)
    th = np.arange(1, len(names) + 1, dtype=np.float32)  # distinct thresholds: 1..8
    eff = dict(zip(names, plan.effective(th)))
    # TPU-MLIR 1.23 (checked on its lowered PNet, tests/fixtures/tpu_mlir): backward, the PRelu output takes the
    # MaxPool's range (max 4) and the Conv only the PRelu's max (4) keeping its own min (-2); forward, the PRelu
    # and the MaxPool take the Conv's (-2, 4): scale max(|min|, |max|) -> 4 everywhere
    assert eff["p_PRelu"] == eff["m_MaxPool"] == eff["c_Conv"] == 4.0
    th2 = th.copy()
    th2[1] = 9.0  # a Conv threshold above its consumers' now wins through its own min
    eff2 = dict(zip(names, plan.effective(th2)))
    assert eff2["c_Conv"] == eff2["p_PRelu"] == eff2["m_MaxPool"] == 9.0
    # Concat inputs used only by it, same sign: take the Concat's threshold; Reshape output copies its input
    assert eff["c2_Conv"] == eff["c3_Conv"] == eff["cat_Concat"] == eff["y_Reshape"] == 7.0
    assert eff["x"] == 1.0
    assert plan.signed["c_Conv"] and plan.signed["m_MaxPool"]


def test_concat_with_mixed_signs_is_left_alone_and_unsigned_relu_outputs():
    fn, _ = to_jax(_model())
    g = fn.graph
    mins = {t: -1.0 for t in g.tensors}
    mins["c2_Conv"] = 0.0  # unsigned: the Concat inputs have different signs -> no backward copy
    plan = make_plan(g, mins)
    th = np.arange(1, len(g.tensors) + 1, dtype=np.float32)
    eff = dict(zip(g.tensors, plan.effective(th)))
    assert eff["c2_Conv"] == 5.0 and eff["c3_Conv"] == 6.0
    assert plan.signed["c2_Conv"] is False and plan.signed["c3_Conv"] is True


# ------------------------------------------------------------------------------------- issue 12's rules (§3.2)
def _sign_model():
    """x -> Mul(1.5) [MulConst] -> Conv -> Resize nearest x2 [Upsample] -> MaxPool; Sigmoid * Sigmoid, a * b,
    a - b, 3 - sigmoid(a) [SubConst]."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Mul", ["x", "k15"], ["mc"], name="mulc"),
        helper.make_node("Conv", ["mc", "w"], ["c"], name="conv"),
        helper.make_node("Resize", ["c", "", "sc"], ["up"], name="rs", mode="nearest"),
        helper.make_node("MaxPool", ["up"], ["mp"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["x", "w"], ["a"], name="ca"),
        helper.make_node("Conv", ["x", "w2"], ["b"], name="cb"),
        helper.make_node("Mul", ["a", "b"], ["ab"], name="ab"),
        helper.make_node("Sigmoid", ["a"], ["sa"], name="sa"),
        helper.make_node("Sigmoid", ["b"], ["sb"], name="sb"),
        helper.make_node("Mul", ["sa", "sb"], ["ss"], name="ss"),
        helper.make_node("Sub", ["a", "b"], ["d"], name="sub"),
        helper.make_node("Sub", ["k3", "sa"], ["sc3"], name="subc"),
    ]
    inits = [init("k15", np.array(1.5, np.float32)), init("k3", np.array(3.0, np.float32)),
             init("w", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             init("w2", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             init("sc", np.array([1, 1, 2, 2], np.float32))]
    outs = [vi(t, None) for t in ("mp", "ab", "ss", "d", "sc3")]
    return make_model(nodes, [vi("x", [1, 3, 4, 4])], outs, inits)


def test_issue12_sign_and_copy_rules():
    fn, _ = to_jax(_sign_model())
    g = fn.graph
    ty = {op.name: op.type for op in g.ops}
    assert ty["mc_Mul"] == "MulConst" and ty["up_Resize"] == "Upsample" and ty["sc3_Sub"] == "SubConst"
    names = list(g.tensors)
    # table mins: every output non-negative except x and the convs (so the sign rules have something to fix)
    mins = {t: (-1.0 if t in ("x", "c_Conv", "a_Conv", "b_Conv") else 0.0) for t in names}
    plan = make_plan(g, mins)
    th = np.arange(1, len(names) + 1, dtype=np.float32)
    eff = dict(zip(names, plan.effective(th)))
    # MulConst: the input's range times |c| (ForwardMulConst), whatever its own table entry says
    assert eff["mc_Mul"] == pytest.approx(1.5 * eff["x"]) and plan.signed["mc_Mul"]
    # Upsample forward copy; MaxPool KeepSign (its input is signed) and forward copy
    assert eff["up_Resize"] == eff["c_Conv"] and eff["mp_MaxPool"] == eff["c_Conv"]
    assert plan.signed["up_Resize"] and plan.signed["mp_MaxPool"]
    # KeepMulSign: two signed factors make a signed product; Mul of two Sigmoids is [0, th]
    assert plan.signed["ab_Mul"] and not plan.signed["ss_Mul"]
    # Sub is always signed; SubConst of an unsigned input with an unsigned output becomes signed
    assert plan.signed["d_Sub"] and plan.signed["sc3_Sub"]


def test_negative_mulconst_swaps_to_a_signed_range():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "k"], ["y"], name="m")]
    fn, _ = to_jax(make_model(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", None)], [init("k", np.array(-2.0, np.float32))]))
    g = fn.graph
    plan = make_plan(g, {t: 0.0 for t in g.tensors})
    eff = dict(zip(g.tensors, plan.effective(np.array([1.0, 3.0, 5.0], np.float32))))
    assert eff["y_Mul"] == 6.0 and plan.signed["y_Mul"] and not plan.signed["r_Relu"]
