"""``to_jax(model, input_shapes)``: TPU-MLIR's list syntax (list, one shape alone, the string) and a dict by input
name give the same graph and outputs; a dict naming an unknown input or missing one is a one-line ModelError."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from onnx import helper

from qsens.errors import ModelError
from qsens.onnx import to_jax
from tests.onnx_builders import conv_bn_relu_model, init, make_model, vi


def _two_input_model():
    """a [N,3,H,W] -> Conv -> GlobalAveragePool -> Flatten -> Gemm, + b [N,5]: two inputs of different ranks
    and dynamic spatial dims, so a mixed-up order or a wrong shape cannot pass."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["a", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw"], ["e"], name="fc", transB=1),
        helper.make_node("Add", ["e", "b"], ["y"], name="add"),
    ]
    inits = [init("w", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)),
             init("fw", rng.standard_normal((5, 6)).astype(np.float32))]
    return make_model(nodes, [vi("a", ["N", 3, "H", "W"]), vi("b", ["N", 5])], [vi("y", ["N", 5])], inits)


def _summary(fn):
    g = fn.model.graph
    ops = [(o.name, o.type, o.inputs, o.outputs, o.weights, o.attrs, o.out_shapes, o.out_dtypes, o.onnx_type)
           for o in g.ops]
    return ops, g.inputs, g.outputs, g.output_names, g.input_shapes, g.batch


def _same(variants, feeds):
    results = []
    for shapes in variants:
        fn, params = to_jax(_two_input_model() if "b" in feeds else conv_bn_relu_model(), shapes)
        results.append((shapes, _summary(fn), params, {k: np.asarray(v) for k, v in jax.jit(fn)(params, feeds).items()}))
    _, s0, p0, y0 = results[0]
    for shapes, s, p, y in results[1:]:
        assert s == s0, f"graph differs for input_shapes={shapes!r}"
        assert p.keys() == p0.keys() and all(np.array_equal(p[k], p0[k]) for k in p0), shapes
        assert y.keys() == y0.keys() and all(np.array_equal(y[k], y0[k]) for k in y0), shapes


def test_two_inputs_dict_equals_list():
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((2, 3, 7, 9)).astype(np.float32), "b": rng.standard_normal((2, 5)).astype(np.float32)}
    _same([[[2, 3, 7, 9], [2, 5]],
           "[[2,3,7,9],[2,5]]",
           ((2, 3, 7, 9), (2, 5)),
           {"a": [2, 3, 7, 9], "b": [2, 5]},
           {"b": (2, 5), "a": np.array([2, 3, 7, 9])},  # order of the keys does not matter
           "{'b': [2, 5], 'a': [2, 3, 7, 9]}"], feeds)


def test_one_input_all_forms():
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    _same([[[3, 3, 8, 8]], [3, 3, 8, 8], "[[3,3,8,8]]", "[3,3,8,8]", {"x": [3, 3, 8, 8]}], {"x": x})


@pytest.mark.parametrize("shapes, match", [
    ({"a": [1, 3, 8, 8], "c": [1, 5]}, r"^input_shapes names input 'c', which '<in-memory model>' does not have; "
                                       r"its inputs are: a, b\.$"),
    ({"a": [1, 3, 8, 8]}, r"^input_shapes gives no shape for input 'b' of '<in-memory model>'; give one for each "
                          r"input: a, b\.$"),
    ({"a": [1, 3, 8, 8], "b": [1, 5, 1]}, r"rank 3, the model declares rank 2"),
    ({"a": [1, 4, 8, 8], "b": [1, 5]}, r"dim 1 of input 'a' as 4, the model fixes it to 3"),
    ([[1, 3, 8, 8]], r"gives 1 shape\(s\) but '<in-memory model>' has 2 input\(s\) \(a, b\)"),
    ("[[1,3,8,8], [1,5]", r"is not a list of shapes like \[\[1,3,224,224\]\]"),
    ({"a": [1, 3, 8, 8], "b": "1,5"}, r"has '1,5' where a shape of non-negative integers"),
    (7, r"is not a list of shapes"),
])
def test_errors_are_one_line_and_name_the_input(shapes, match):
    with pytest.raises(ModelError, match=match) as e:
        to_jax(_two_input_model(), shapes)
    assert "\n" not in str(e.value)
