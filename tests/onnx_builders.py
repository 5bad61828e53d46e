"""Small ONNX graphs generated with onnx.helper for converter tests (no downloads)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, inits=(), opset=18, name="g"):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def conv_bn_relu_model(seed=0, relu="Relu", batch="N"):
    """x -> Conv(3x3, pad 1) -> BN -> Relu|Clip(0,6) -> Conv 1x1 -> Add(skip) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    C, O = 3, 8
    inits = [
        init("w1", rng.standard_normal((O, C, 3, 3)).astype(np.float32) * 0.3),
        init("b1", rng.standard_normal(O).astype(np.float32) * 0.1),
        init("bn_s", rng.uniform(0.5, 1.5, O).astype(np.float32)),
        init("bn_b", rng.standard_normal(O).astype(np.float32) * 0.1),
        init("bn_m", rng.standard_normal(O).astype(np.float32) * 0.1),
        init("bn_v", rng.uniform(0.5, 2.0, O).astype(np.float32)),
        init("w2", rng.standard_normal((O, O, 1, 1)).astype(np.float32) * 0.3),
        init("fc_w", rng.standard_normal((5, O)).astype(np.float32) * 0.3),
        init("fc_b", rng.standard_normal(5).astype(np.float32) * 0.1),
        init("zero", np.asarray(0.0, np.float32)),
        init("six", np.asarray(6.0, np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn1"], name="bn1", epsilon=1e-3),
    ]
    if relu == "Relu":
        nodes.append(helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"))
    else:
        nodes.append(helper.make_node("Clip", ["bn1", "zero", "six"], ["r1"], name="clip1"))
    nodes += [
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a1"], name="add1"),
        helper.make_node("GlobalAveragePool", ["a1"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [vi("x", [batch, C, 8, 8])], [vi("y", [batch, 5])], inits)
