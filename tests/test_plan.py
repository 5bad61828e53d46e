"""TPU-MLIR's calibration post-processing (spec §3.2) as the static copy map of the quantization plan."""

import numpy as np
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
