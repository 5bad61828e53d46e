"""The canonicalizer's shape-inference memo (qsens.onnx.canonical._INFER_MEMO): the same graphs as without it,
and a build of a signature already seen makes no ``jax.eval_shape`` call."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from onnx import helper

from qsens.onnx import canonical as C
from qsens.onnx import to_jax
from tests.onnx_builders import conv_bn_relu_model, init, make_model, vi


@pytest.fixture()
def counted(monkeypatch):
    """Counts the real shape inferences (``_eval_shape`` calls) and starts from an empty memo, with the notes kept
    across processes off (another test of the same worker may have enabled the cache and left notes of these
    signatures; ``tests/test_exe_cache.py`` tests the notes)."""
    from qsens import exe_cache

    monkeypatch.setattr(exe_cache, "_DIR", [None])
    monkeypatch.setattr(C, "_INFER_MEMO", {})
    calls = []
    orig = C.Canonicalizer._eval_shape

    def wrap(*a):
        calls.append(a[-1])  # the op type
        return orig(*a)

    monkeypatch.setattr(C.Canonicalizer, "_eval_shape", staticmethod(wrap))
    return calls


def _fingerprint(g):
    """Everything shape inference decides, per op and tensor."""
    return ([(op.name, op.type, op.inputs, op.outputs, op.out_shapes, op.out_dtypes) for op in g.ops],
            {t: g.tensor_shape(t) for op in g.ops for t in op.outputs})


def _reshape_model(target):
    x = np.arange(16, dtype=np.float32)
    return make_model([helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                       helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape")],
                      [vi("x", [1, 16])], [vi("y", None)], [init("b", x[None]), init("shape", np.asarray(target))])


def test_memo_builds_the_same_graphs(counted, monkeypatch):
    m = conv_bn_relu_model()
    fn, _ = to_jax(m)
    with_memo = [_fingerprint(fn.graph), _fingerprint(fn.model.graph_at(7))]
    n_first = len(counted)
    assert n_first > 0
    monkeypatch.setattr(C, "_infer_key", lambda *a: None)  # no memo at all
    fn2, _ = to_jax(m)
    without = [_fingerprint(fn2.graph), _fingerprint(fn2.model.graph_at(7))]
    assert with_memo == without
    assert len(counted) > 2 * n_first - 1  # the memo really was off: every node inferred again


def test_second_build_infers_nothing(counted):
    m = conv_bn_relu_model()
    to_jax(m)
    n = len(counted)
    fn, _ = to_jax(m)
    fn.model.graph_at(1)
    assert len(counted) == n  # every signature already known
    fn.model.graph_at(5)  # a new batch: new input shapes
    assert len(counted) > n


def test_constants_are_part_of_the_key(counted):
    """Same op type, same input shapes, different Reshape targets: different output shapes."""
    a, _ = to_jax(_reshape_model([2, 8]))
    b, _ = to_jax(_reshape_model([4, 4]))
    assert a.graph.tensor_shape(a.graph.outputs[0]) == (2, 8)
    assert b.graph.tensor_shape(b.graph.outputs[0]) == (4, 4)
    assert counted.count("Reshape") == 2 and counted.count("Add") == 1  # the Add was shared


def test_errors_are_not_memoized(counted):
    """A node that cannot run on its shapes fails each time with the one-line ModelError."""
    from qsens.errors import ModelError

    bad = make_model([helper.make_node("Add", ["x", "b"], ["y"], name="add")], [vi("x", [1, 16])],
                     [vi("y", None)], [init("b", np.ones((1, 3), np.float32))])
    for _ in range(2):
        with pytest.raises(ModelError, match="node 'add' \\(Add\\) cannot run on input shapes"):
            to_jax(bad)
    assert counted.count("Add") == 2


def test_key_holds_every_value():
    """Constants by dtype and every byte (repr would elide a big one); an unhashable value means no memo."""
    from qsens.onnx import registry

    d = registry.lookup("Reshape", node_name="r", opset=18)
    avals = {"x": jax.ShapeDtypeStruct((1, 5000), np.float32)}

    def key(const, attrs=None):
        return C._infer_key(d, attrs or {"_opset": 18}, [("act", "x"), ("const", const)], avals, {})

    big = np.zeros(5000, np.int64)
    big2 = big.copy()
    big2[2500] = 1
    assert key(big) == key(big.copy())
    assert key(big) != key(big2)
    assert key(big) != key(big.astype(np.int32))
    assert key(big, {"_opset": 18, "allowzero": [1, (2.0, "a")]}) is not None
    assert key(big, {"_opset": 18, "odd": {"a": 1}}) is None
