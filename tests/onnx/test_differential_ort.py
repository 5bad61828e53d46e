"""Differential tests: qsens (to_jax, jitted) vs onnxruntime on graphs generated with onnx.helper.

Every registered op appears in at least one case (``test_every_registered_op_is_covered``).  Float outputs
must satisfy ``max|qsens - ort| / max|ort| <= 1e-5`` (float32); integer / bool outputs must be equal.
Static inputs (shapes, axes, pads, scales, ...) are initializers, as exporters write them, and the
TorchScript / Paddle constant-folded shape chains (Shape->Gather->Unsqueeze->Concat->Reshape,
ConstantOfShape, Slice with INT64_MAX ends, Range) are covered as whole graphs.
"""

from __future__ import annotations

import jax
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qsens.onnx import registry, to_jax
from tests.onnx_builders import init, make_model, vi

F, I32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL
INT64_MAX = np.iinfo(np.int64).max
RNG = np.random.default_rng(0)
_NP = {F: np.float32, I32: np.int32, I64: np.int64, BOOL: np.bool_}


def rand(shape, lo=-2.0, hi=2.0, dtype=np.float32):
    if np.issubdtype(dtype, np.integer):
        return RNG.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


class Case:
    """One graph: ``nodes`` over graph inputs ``feeds`` (name -> array) and initializers ``inits``."""

    def __init__(self, ops, nodes, feeds, inits=(), opset=17, out=None):
        self.ops = set(ops)
        self.nodes, self.feeds, self.inits, self.opset = nodes, feeds, list(inits), opset
        self.out = out or [o for o in nodes[-1].output if o][:1]

    def model(self):
        ins = [vi(n, list(a.shape), helper.np_dtype_to_tensor_dtype(a.dtype)) for n, a in self.feeds.items()]
        outs = [helper.make_empty_tensor_value_info(o) for o in self.out]
        return make_model(self.nodes, ins, outs, [init(k, v) for k, v in self.inits], opset=self.opset)


def unary(op, shape=(2, 3, 4, 5), lo=-3.0, hi=3.0, opset=17, **attrs):
    return Case([op], [helper.make_node(op, ["x"], ["y"], **attrs)], {"x": rand(shape, lo, hi)}, opset=opset)


def binary(op, sa, sb, lo=-3.0, hi=3.0, dtype=np.float32, b_init=True, opset=17):
    b = rand(sb, lo, hi, dtype)
    if op in ("Div",) and np.issubdtype(dtype, np.integer):
        b[b == 0] = 1
    feeds = {"a": rand(sa, lo, hi, dtype)}
    inits = [("b", b)] if b_init else []
    if not b_init:
        feeds["b"] = b
    return Case([op], [helper.make_node(op, ["a", "b"], ["y"])], feeds, inits, opset=opset)


def node(op, feeds, inits=(), opset=17, outs=("y",), inputs=None, **attrs):
    names = inputs if inputs is not None else list(feeds) + [k for k, _ in inits]
    return Case([op], [helper.make_node(op, names, list(outs), **attrs)], feeds, inits, opset=opset, out=list(outs))


X4 = (1, 4, 6, 6)
CASES: dict[str, Case] = {}


def add(name, case):
    assert name not in CASES
    CASES[name] = case


# --- element-wise, shape/dtype sweeps
for shp in [(7,), (2, 3, 4, 5), (1, 8, 5, 5)]:
    tag = "x".join(map(str, shp))
    for op in ["Relu", "Neg", "Abs", "Exp", "Tanh", "Sigmoid", "Erf", "Softplus", "Softsign", "Floor", "Ceil",
               "HardSwish", "Identity"]:
        add(f"{op}-{tag}", unary(op, shp))
    for op in ["Log", "Sqrt", "Reciprocal"]:
        add(f"{op}-{tag}", unary(op, shp, 0.1, 4.0))
    for op in ["Add", "Sub", "Mul", "Div", "Equal", "Greater", "Less"]:
        add(f"{op}-{tag}", binary(op, shp, shp[-1:]))
for opset in (11, 13, 17):
    add(f"Softmax-opset{opset}", unary("Softmax", (2, 3, 4), opset=opset, axis=1))
add("Softmax-default", unary("Softmax", (3, 4, 5), opset=13))
for opset in (11, 13):
    add(f"LogSoftmax-opset{opset}", unary("LogSoftmax", (2, 3, 4), opset=opset, axis=1))
add("LogSoftmax-default", unary("LogSoftmax", (3, 4, 5), opset=13))
for a, b in [((2, 3, 4), (3, 1)), ((1, 3, 1), (2, 1, 4)), ((2, 3), ())]:
    add(f"Add-bcast-{a}-{b}", binary("Add", a, b))
add("Add-two-inputs", binary("Add", (2, 3, 4), (2, 3, 4), b_init=False))
add("Mul-two-inputs", binary("Mul", (2, 3, 4), (2, 1, 4), b_init=False))
for dt in (np.int32,):
    add("Add-int32", binary("Add", (2, 5), (5,), -9, 9, dt))
    add("Div-int32", binary("Div", (3, 5), (5,), -9, 9, dt))
    add("Equal-int32", binary("Equal", (3, 5), (5,), -2, 2, dt))
add("Pow", binary("Pow", (2, 3, 4), (4,), 0.5, 2.0))
add("Pow-scalar2", Case(["Pow"], [helper.make_node("Pow", ["x", "e"], ["y"])], {"x": rand((2, 5))},
                        [("e", np.asarray(2.0, np.float32))]))
add("LeakyRelu", unary("LeakyRelu", X4, alpha=0.1))
add("LeakyRelu-default", unary("LeakyRelu", X4))
add("HardSigmoid", unary("HardSigmoid", X4, alpha=0.3, beta=0.4))
add("HardSigmoid-default", unary("HardSigmoid", X4, lo=-5, hi=5))
add("Elu", unary("Elu", X4, alpha=0.7))
add("Elu-default", unary("Elu", X4))
add("Selu", unary("Selu", X4))
add("Gelu", unary("Gelu", X4, opset=20))
add("Gelu-tanh", unary("Gelu", X4, opset=20, approximate="tanh"))
add("PRelu", Case(["PRelu"], [helper.make_node("PRelu", ["x", "s"], ["y"])], {"x": rand(X4)},
                  [("s", rand((4, 1, 1), 0, 0.5))]))
for opset in (11, 13):
    add(f"Clip-opset{opset}", Case(["Clip"], [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": rand(X4, -8, 8)},
                                  [("lo", np.asarray(0.0, np.float32)), ("hi", np.asarray(6.0, np.float32))], opset=opset))
add("Clip-max-only", Case(["Clip"], [helper.make_node("Clip", ["x", "", "hi"], ["y"])], {"x": rand(X4, -8, 8)},
                          [("hi", np.asarray(1.0, np.float32))]))
for op in ("Max", "Min", "Sum"):
    add(f"{op}-3", Case([op], [helper.make_node(op, ["a", "b", "c"], ["y"])], {"a": rand((2, 3, 4))},
                        [("b", rand((3, 4))), ("c", rand((4,)))]))
    add(f"{op}-1", Case([op], [helper.make_node(op, ["a"], ["y"])], {"a": rand((2, 3))}))
add("Where", Case(["Where", "Greater"], [helper.make_node("Greater", ["x", "t"], ["c"]),
                                         helper.make_node("Where", ["c", "x", "z"], ["y"])],
                  {"x": rand((2, 3, 4))}, [("t", np.asarray(0.3, np.float32)), ("z", rand((3, 4)))]))
for to, name in [(I32, "int32"), (F, "float"), (BOOL, "bool")]:
    add(f"Cast-{name}", unary("Cast", (3, 4), -5, 5, to=to))
add("CastLike", Case(["CastLike"], [helper.make_node("CastLike", ["x", "like"], ["y"])], {"x": rand((3, 4), -5, 5)},
                     [("like", np.zeros((1,), np.int32))], opset=15))
add("Dropout", Case(["Dropout"], [helper.make_node("Dropout", ["x"], ["y"])], {"x": rand(X4)}, opset=13))
add("Dropout-opset11", Case(["Dropout"], [helper.make_node("Dropout", ["x"], ["y"], ratio=0.3)], {"x": rand(X4)},
                            opset=11))

# --- conv family
for name, wshape, attrs in [
    ("Conv-3x3-pad", (8, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    ("Conv-stride2-asym", (8, 4, 3, 3), dict(pads=[0, 1, 1, 0], strides=[2, 2])),
    ("Conv-dil2", (8, 4, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    ("Conv-group2", (8, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    ("Conv-depthwise", (4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1], strides=[2, 2])),
    ("Conv-1x1", (6, 4, 1, 1), {}),
    ("Conv-same-upper", (8, 4, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ("Conv-same-lower", (8, 4, 4, 4), dict(auto_pad="SAME_LOWER")),
    ("Conv-valid", (8, 4, 3, 3), dict(auto_pad="VALID")),
]:
    add(name, Case(["Conv"], [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], {"x": rand((2, 4, 7, 7))},
                   [("w", rand(wshape)), ("b", rand((wshape[0],)))]))
add("Conv-1d", Case(["Conv"], [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])], {"x": rand((2, 3, 9))},
                    [("w", rand((5, 3, 3)))]))
for name, wshape, attrs in [
    ("ConvTranspose-s2", (4, 3, 3, 3), dict(strides=[2, 2])),
    ("ConvTranspose-pads-outpad", (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ("ConvTranspose-group", (4, 2, 3, 3), dict(group=2, strides=[2, 1])),
    ("ConvTranspose-dil", (4, 3, 2, 2), dict(dilations=[2, 2])),
    ("ConvTranspose-k4s2p1", (4, 3, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ("ConvTranspose-outshape", (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[12, 12])),
    ("ConvTranspose-same-upper", (4, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
]:
    add(name, Case(["ConvTranspose"], [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
                   {"x": rand((1, 4, 5, 5))}, [("w", rand(wshape)), ("b", rand((wshape[1] * attrs.get("group", 1),)))]))
add("Gemm", Case(["Gemm"], [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                 {"x": rand((3, 6))}, [("w", rand((5, 6))), ("b", rand((5,)))]))
add("Gemm-transA", Case(["Gemm"], [helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)], {"x": rand((6, 3))},
                        [("w", rand((6, 5)))]))
for a, b in [((3, 6), (6, 5)), ((2, 3, 6), (6, 5)), ((2, 3, 4, 6), (6, 2)), ((5, 6), (6,))]:
    add(f"MatMul-{a}-{b}", Case(["MatMul"], [helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": rand(a)},
                                [("w", rand(b))]))
add("MatMul-two-inputs", binary("MatMul", (2, 3, 4), (2, 4, 5), b_init=False))
add("BatchNormalization", Case(["BatchNormalization"], [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                                                         epsilon=1e-3)],
                               {"x": rand(X4)}, [("s", rand((4,), 0.5, 1.5)), ("b", rand((4,))), ("m", rand((4,))),
                                                 ("v", rand((4,), 0.5, 2))]))
add("Conv-BN-Relu", Case(["Conv", "BatchNormalization", "Relu"], [
    helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
    helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
    helper.make_node("Relu", ["n"], ["y"])], {"x": rand(X4)},
    [("w", rand((6, 4, 3, 3))), ("s", rand((6,), 0.5, 1.5)), ("b", rand((6,))), ("m", rand((6,))), ("v", rand((6,), 0.5, 2))]))

# --- pooling
for name, attrs in [
    ("k3s2", dict(kernel_shape=[3, 3], strides=[2, 2])),
    ("k3s2p1", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("k3s2-ceil", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("k2-same", dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER", strides=[2, 2])),
]:
    add(f"MaxPool-{name}", Case(["MaxPool"], [helper.make_node("MaxPool", ["x"], ["y"], **attrs)], {"x": rand((1, 3, 7, 7))}))
    add(f"AveragePool-{name}", Case(["AveragePool"], [helper.make_node("AveragePool", ["x"], ["y"], **attrs)],
                                    {"x": rand((1, 3, 7, 7))}))
add("AveragePool-count-include-pad", Case(["AveragePool"], [helper.make_node(
    "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)], {"x": rand((1, 3, 5, 5))}))
add("AveragePool-1d", Case(["AveragePool"], [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2])],
                           {"x": rand((2, 3, 9))}))
add("GlobalAveragePool", unary("GlobalAveragePool", X4))
add("GlobalMaxPool", unary("GlobalMaxPool", X4))

# --- reductions: axes as attribute (old opsets) and as input (ReduceSum >= 13, the others >= 18)
for op in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceMean"):
    since_input = 13 if op == "ReduceSum" else 18
    for keep in (0, 1):
        add(f"{op}-attr-k{keep}", node(op, {"x": rand((2, 3, 4, 5))}, opset=11, axes=[1, -1], keepdims=keep))
        add(f"{op}-input-k{keep}", node(op, {"x": rand((2, 3, 4, 5))}, [("axes", np.array([2, 3], np.int64))],
                                       opset=since_input, keepdims=keep))
    add(f"{op}-all", node(op, {"x": rand((2, 3, 4))}, opset=since_input))
for op in ("ArgMax", "ArgMin"):
    for opset in (11, 13):
        add(f"{op}-opset{opset}", node(op, {"x": rand((3, 4, 5))}, opset=opset, axis=1, keepdims=0))
    add(f"{op}-last", node(op, {"x": rand((3, 4, 5), -1, 1).round(0)}, opset=13, axis=-1, select_last_index=1))

# --- shape / data movement
add("Flatten", node("Flatten", {"x": rand((2, 3, 4, 5))}, axis=2))
add("Flatten-default", node("Flatten", {"x": rand((2, 3, 4, 5))}))
add("Reshape", node("Reshape", {"x": rand((2, 3, 4))}, [("s", np.array([0, -1], np.int64))]))
add("Transpose", node("Transpose", {"x": rand((2, 3, 4))}, perm=[2, 0, 1]))
add("Transpose-default", node("Transpose", {"x": rand((2, 3, 4))}))
add("Squeeze-input", node("Squeeze", {"x": rand((2, 1, 4, 1))}, [("a", np.array([1, -1], np.int64))], opset=13))
add("Squeeze-attr", node("Squeeze", {"x": rand((2, 1, 4, 1))}, opset=11, axes=[1]))
add("Unsqueeze-input", node("Unsqueeze", {"x": rand((2, 4))}, [("a", np.array([0, -1], np.int64))], opset=13))
add("Unsqueeze-attr", node("Unsqueeze", {"x": rand((2, 4))}, opset=11, axes=[1, 3]))
add("Concat", Case(["Concat"], [helper.make_node("Concat", ["a", "b", "c"], ["y"], axis=1)], {"a": rand((2, 3, 4))},
                   [("b", rand((2, 2, 4))), ("c", rand((2, 1, 4)))]))
add("Concat-neg-axis", binary("Concat", (2, 3, 4), (2, 3, 2), b_init=False))
CASES["Concat-neg-axis"].nodes[0].attribute.append(helper.make_attribute("axis", -1))
for opset in (11, 13, 18):
    add(f"Split-sizes-opset{opset}", Case(["Split"], [helper.make_node(
        "Split", ["x"] + (["s"] if opset >= 13 else []), ["y0", "y1", "y2"], axis=1,
        **({"split": [1, 2, 3]} if opset < 13 else {}))], {"x": rand((2, 6, 4))},
        [("s", np.array([1, 2, 3], np.int64))] if opset >= 13 else [], opset=opset, out=["y0", "y1", "y2"]))
add("Split-equal", Case(["Split"], [helper.make_node("Split", ["x"], ["y0", "y1"], axis=-1)], {"x": rand((2, 3, 8))},
                        opset=13, out=["y0", "y1"]))
add("Split-num-outputs", Case(["Split"], [helper.make_node("Split", ["x"], ["y0", "y1", "y2"], axis=1, num_outputs=3)],
                              {"x": rand((2, 7))}, opset=18, out=["y0", "y1", "y2"]))
for name, (st, en, ax, sp) in {
    "basic": ([1, 0], [3, 2], [1, 2], [1, 1]),
    "int64max": ([1], [INT64_MAX], [1], [1]),
    "neg-step": ([-1], [-INT64_MAX], [2], [-1]),
    "step2": ([0, 1], [10, 5], [2, 3], [2, 2]),
    "neg-start": ([-2], [INT64_MAX], [-1], [1]),
}.items():
    add(f"Slice-{name}", node("Slice", {"x": rand((2, 4, 5, 6))}, [
        ("st", np.array(st, np.int64)), ("en", np.array(en, np.int64)), ("ax", np.array(ax, np.int64)),
        ("sp", np.array(sp, np.int64))], opset=13))
add("Gather-axis0", node("Gather", {"x": rand((5, 3))}, [("i", np.array([0, 4, -1], np.int64))], axis=0))
add("Gather-axis1-2d", node("Gather", {"x": rand((2, 5, 3))}, [("i", np.array([[0, 1], [4, 2]], np.int64))], axis=1))
add("Gather-scalar", node("Gather", {"x": rand((2, 5, 3))}, [("i", np.array(2, np.int64))], axis=1))
add("Pad-constant", node("Pad", {"x": rand(X4)}, [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)),
                                                  ("v", np.asarray(0.5, np.float32))], opset=13))
add("Pad-reflect", node("Pad", {"x": rand(X4)}, [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], opset=13,
                        mode="reflect"))
add("Pad-edge", node("Pad", {"x": rand(X4)}, [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], opset=13, mode="edge"))
add("Pad-negative", node("Pad", {"x": rand(X4)}, [("p", np.array([0, 0, -1, 2, 0, 0, 1, -2], np.int64))], opset=13))
add("Pad-axes", node("Pad", {"x": rand(X4)}, [("p", np.array([1, 2, 3, 1], np.int64))], opset=18,
                     inputs=["x", "p", "", "a"]))
CASES["Pad-axes"].inits.append(("a", np.array([2, -1], np.int64)))
add("Expand", node("Expand", {"x": rand((3, 1))}, [("s", np.array([2, 3, 4], np.int64))], opset=13))
add("Tile", node("Tile", {"x": rand((2, 3))}, [("r", np.array([2, 3], np.int64))], opset=13))
add("DepthToSpace-DCR", node("DepthToSpace", {"x": rand((1, 8, 3, 4))}, opset=13, blocksize=2))
add("DepthToSpace-CRD", node("DepthToSpace", {"x": rand((1, 8, 3, 4))}, opset=13, blocksize=2, mode="CRD"))
add("SpaceToDepth", node("SpaceToDepth", {"x": rand((1, 2, 4, 6))}, opset=13, blocksize=2))
add("EyeLike", Case(["EyeLike"], [helper.make_node("EyeLike", ["x"], ["e"], k=1), helper.make_node("Add", ["x", "e"], ["y"])],
                    {"x": rand((4, 5))}))

# --- normalization
add("LRN", node("LRN", {"x": rand((2, 6, 4, 4))}, opset=13, size=3, alpha=1e-3, beta=0.75, bias=2.0))
for axis in (-1, 1):
    s_shape = (3, 4, 5)[axis:] if axis > 0 else (5,)
    add(f"LayerNormalization-axis{axis}", node("LayerNormalization", {"x": rand((2, 3, 4, 5))},
                                               [("s", rand(s_shape)), ("b", rand(s_shape))], opset=17, axis=axis))
add("InstanceNormalization", node("InstanceNormalization", {"x": rand(X4)}, [("s", rand((4,))), ("b", rand((4,)))],
                                  epsilon=1e-4))

# --- Resize / Upsample (static scales / sizes)
_roi = np.zeros((0,), np.float32)
for mode, coord, nmode in [
    ("nearest", "asymmetric", "floor"), ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "half_pixel", "round_prefer_ceil"), ("nearest", "align_corners", "round_prefer_floor"),
    ("nearest", "asymmetric", "ceil"), ("nearest", "pytorch_half_pixel", "floor"),
    ("linear", "half_pixel", None), ("linear", "asymmetric", None), ("linear", "align_corners", None),
    ("linear", "pytorch_half_pixel", None), ("cubic", "half_pixel", None),
]:
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, **({"nearest_mode": nmode} if nmode else {}))
    for kind, val in [("up", np.array([1, 1, 2, 2], np.float32)), ("frac", np.array([1, 1, 1.6, 0.5], np.float32))]:
        add(f"Resize-{mode}-{coord}-{nmode}-{kind}", node("Resize", {"x": rand((1, 2, 5, 6))}, [("roi", _roi), ("sc", val)],
                                                          opset=13, **attrs))
    add(f"Resize-{mode}-{coord}-{nmode}-sizes", node("Resize", {"x": rand((1, 2, 5, 6))},
                                                     [("sz", np.array([1, 2, 8, 4], np.int64))], opset=13,
                                                     inputs=["x", "", "", "sz"], **attrs))
add("Resize-opset11", node("Resize", {"x": rand((1, 2, 4, 4))}, [("roi", _roi), ("sc", np.array([1, 1, 2, 2], np.float32))],
                           opset=11, mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
add("Resize-axes-opset18", node("Resize", {"x": rand((1, 2, 4, 6))}, [("sc", np.array([2, 0.5], np.float32))],
                                opset=18, inputs=["x", "", "sc"], axes=[2, 3], mode="linear"))
add("Upsample-nearest", node("Upsample", {"x": rand((1, 2, 3, 4))}, [("sc", np.array([1, 1, 2, 3], np.float32))], opset=9))
add("Upsample-linear", node("Upsample", {"x": rand((1, 2, 3, 4))}, [("sc", np.array([1, 1, 2, 2], np.float32))], opset=9,
                            mode="linear"))

# --- constant-folded shape chains (TorchScript / Paddle exports)
add("chain-Shape-Gather-Unsqueeze-Concat-Reshape", Case(
    ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Conv"], [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "m1"], ["shp"], axis=0),
        helper.make_node("Reshape", ["c", "shp"], ["y"])],
    {"x": rand((2, 3, 5, 5))}, [("w", rand((4, 3, 3, 3))), ("zero", np.array(0, np.int64)), ("ax0", np.array([0], np.int64)),
                                ("m1", np.array([-1], np.int64))], opset=13))
add("chain-Shape-slice-ConstantOfShape", Case(
    ["Shape", "Slice", "ConstantOfShape", "Add"], [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "st", "en"], ["s2"]),
        helper.make_node("ConstantOfShape", ["s2"], ["k"], value=helper.make_tensor("v", F, [1], [0.25])),
        helper.make_node("Add", ["x", "k"], ["y"])],
    {"x": rand((2, 3, 4))}, [("st", np.array([1], np.int64)), ("en", np.array([INT64_MAX], np.int64))], opset=13))
add("chain-Shape-start-end-opset15", Case(
    ["Shape", "Cast", "Mul"], [
        helper.make_node("Shape", ["x"], ["s"], start=-2),
        helper.make_node("Cast", ["s"], ["sf"], to=F),
        helper.make_node("Mul", ["x", "sf"], ["y"])],
    {"x": rand((2, 3, 2))}, opset=15))
add("chain-Range-Add", Case(
    ["Range", "Cast", "Add"], [
        helper.make_node("Range", ["r0", "r1", "r2"], ["r"]),
        helper.make_node("Cast", ["r"], ["rf"], to=F),
        helper.make_node("Add", ["x", "rf"], ["y"])],
    {"x": rand((2, 5))}, [("r0", np.array(1, np.int64)), ("r1", np.array(11, np.int64)), ("r2", np.array(2, np.int64))]))
add("chain-Size", Case(
    ["Size", "Cast", "Div"], [
        helper.make_node("Size", ["x"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=F),
        helper.make_node("Div", ["x", "nf"], ["y"])],
    {"x": rand((2, 5))}))
add("chain-paddle-flatten", Case(
    ["Shape", "Slice", "Concat", "Reshape", "ReduceMean", "Gemm"], [
        helper.make_node("ReduceMean", ["x"], ["g"], axes=[2, 3], keepdims=1),
        helper.make_node("Shape", ["g"], ["s"]),
        helper.make_node("Slice", ["s", "z", "one"], ["n"]),
        helper.make_node("Concat", ["n", "m1"], ["shp"], axis=0),
        helper.make_node("Reshape", ["g", "shp"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
    {"x": rand((2, 4, 3, 3))}, [("z", np.array([0], np.int64)), ("one", np.array([1], np.int64)),
                                ("m1", np.array([-1], np.int64)), ("w", rand((3, 4)))], opset=13))


def qsens_run(case: Case):
    m = case.model()
    fn, params = to_jax(m, input_shapes=[a.shape for a in case.feeds.values()])
    out = jax.jit(fn)(params, {k: v for k, v in case.feeds.items()})
    return [np.asarray(out[o]) for o in case.out]


def ort_run(case: Case):
    s = ort.InferenceSession(case.model().SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(case.out, case.feeds)


# Known gaps (xfail, strict): none at the moment.
KNOWN: dict[str, str] = {}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN[n], strict=True)) if n in KNOWN else n for n in sorted(CASES)]
)
def test_matches_onnxruntime(name):
    case = CASES[name]
    got, ref = qsens_run(case), ort_run(case)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape, (g.shape, r.shape)
        if np.issubdtype(r.dtype, np.floating):
            denom = max(float(np.abs(r).max()), 1e-30) if r.size else 1.0
            err = float(np.abs(g.astype(np.float64) - r).max()) / denom if r.size else 0.0
            assert err <= 1e-5, f"relative error {err:.3g}"
        else:
            np.testing.assert_array_equal(g.astype(r.dtype), r)


def test_every_registered_op_is_covered():
    covered = set().union(*(c.ops for c in CASES.values()))
    for c in CASES.values():  # the op types actually present in the graphs count as well
        covered |= {n.op_type for n in c.nodes}
    missing = sorted(set(registry.supported_ops()) - covered)
    assert not missing, f"registered ops without a differential case: {missing}"
