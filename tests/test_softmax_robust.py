"""Softmax / LogSoftmax at extreme magnitudes: qsens (``to_jax``, jitted) vs onnxruntime.

The reported failure: Relu -> GlobalAveragePool -> Softmax(axis=1) on activations around 7e9 gave NaN for most
samples under ``jax.jit`` while onnxruntime gave a finite one-hot.  XLA-CPU recomputes the pool's ``sum * (1/25)``
inside both softmax fusions (the row max and the exponential) and LLVM contracts ``sum * c - max`` into one FMA,
so at the argmax ``x - max(x)`` is the product's rounding error (up to half an ulp of 7e9 = 256) instead of 0:
``exp`` overflows (inf/inf) or every term underflows (0/0).  Every case here must give finite outputs that agree
with onnxruntime.  Measured on the 2-core CPU (jax 0.10.2): with the previous ``exp(x - max(x))`` 14 of the 25
Softmax cases gave NaN (LogSoftmax was not implemented); one centring with ``stop_gradient`` and a clamp at 0
still failed 24 of 48; the double centring in ``qsens/onnx/ops/nn.py`` (``_centered``) passes all.  On an H200
(jax 0.11.2, XLA-GPU) the previous code failed only the all -inf row.
"""

from __future__ import annotations

import jax
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from qsens.onnx import to_jax
from tests.onnx_builders import init, make_model, vi

RTOL, ATOL = 1e-5, 1e-7  # ATOL: float32 rounding of probabilities around 1 (ulp 6e-8); rtol holds everywhere else


def _gap_model(op: str, c: int, opset: int = 13):
    """x -> Relu -> GlobalAveragePool -> ``op``(axis=1): the reported graph."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node(op, ["g"], ["y"], axis=1)]
    return make_model(nodes, [vi("x", ["N", c, 5, 5])], [vi("y", ["N", c, 1, 1])], opset=opset)


def _scaled_model(op: str, shape, scale: float, axis: int = -1, opset: int = 13):
    """x -> Mul(non-power-of-two constant) -> ``op``: the product is recomputed inside the softmax fusions."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node(op, ["m"], ["y"], axis=axis)]
    return make_model(nodes, [vi("x", ["N", *shape[1:]])], [vi("y", ["N", *shape[1:]])],
                      [init("s", np.asarray(scale, np.float32))], opset=opset)


def _matmul_model(op: str, w: np.ndarray):
    """x -> MatMul -> ``op``(axis=-1): attention-like scores of large magnitude."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node(op, ["m"], ["y"], axis=-1)]
    return make_model(nodes, [vi("x", ["N", w.shape[0]])], [vi("y", ["N", w.shape[1]])], [init("w", w)], opset=13)


def _run(model, x):
    fn, params = to_jax(model, [list(x.shape)])
    got = np.asarray(jax.jit(fn)(params, {"x": x})["y"])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return got, ref


def _check(got, ref, op="Softmax", axis=-1):
    """Finite, and within float32 rounding of onnxruntime.

    Softmax: element-wise ``rtol=1e-5`` (probabilities).  LogSoftmax: ``|got - ref| <= 1e-5 * max |ref|`` over
    the row, as the differential suite measures: an output ``x_i - max(x) - log(sum)`` inherits the absolute
    rounding error of ``x`` (a few ulps of the row's magnitude: the pool's summation order, a contracted FMA),
    which is large relative to an output near 0 at 1e30 (measured: row-relative <= 1.4e-6, element-wise up to
    1e-4)."""
    assert got.shape == ref.shape
    assert np.isfinite(ref).all(), "the reference itself is not finite: the case is wrong"
    bad = int((~np.isfinite(got)).sum())
    assert bad == 0, f"{bad} of {got.size} outputs are not finite"
    if op == "Softmax":
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    else:
        err = np.abs(got.astype(np.float64) - ref).max(axis=axis)
        scale = np.abs(ref.astype(np.float64)).max(axis=axis)
        worst = float((err / np.maximum(scale, 1.0)).max())
        assert worst <= RTOL, f"row-relative error {worst:.3g}"


def _rng(seed):
    return np.random.default_rng(seed)


OPS = ["Softmax", "LogSoftmax"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("batch", [8, 16])  # 16: the CPU forward runs it in chunks (lax.map)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reported_gap_softmax_7e9(op, batch, seed):
    x = (_rng(seed).uniform(-0.5, 1.5, (batch, 16, 5, 5)) * 7e9).astype(np.float32)
    _check(*_run(_gap_model(op, 16), x), op, axis=1)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("opset", [11, 13])  # 11: the 2-D coercion at `axis`
def test_gap_softmax_1e30(op, opset):
    x = (_rng(3).uniform(0.5, 1.5, (8, 16, 5, 5)) * 1e30).astype(np.float32)
    _check(*_run(_gap_model(op, 16, opset), x), op, axis=1)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("scale", [0.1, 1 / 3])
def test_scaled_mixed_signs_1e30(op, scale):
    x = (_rng(4).uniform(-1, 1, (8, 3, 20)) * 1e30).astype(np.float32)
    _check(*_run(_scaled_model(op, x.shape, scale), x), op)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", [7e9, -7e9, 1e30, -1e30, 3e38])
def test_row_of_equal_huge_values(op, value):
    """Every element of a row equal (some rows huge, some ordinary): uniform 1/n (log: -log n)."""
    x = _rng(5).uniform(-2, 2, (8, 4, 12)).astype(np.float32)
    x[:, 1, :] = value
    x[3, :, :] = value
    _check(*_run(_scaled_model(op, x.shape, 0.3), x), op)


@pytest.mark.parametrize("op", OPS)
def test_matmul_scores_1e10(op):
    rng = _rng(6)
    w = (rng.standard_normal((32, 24)) * 1e4).astype(np.float32)
    x = (rng.standard_normal((8, 32)) * 1e5).astype(np.float32)
    _check(*_run(_matmul_model(op, w), x), op)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("opset", [11, 13])
def test_ordinary_inputs_agree(op, axis, opset):
    """On normal inputs the robust form stays within float32 rounding of onnxruntime."""
    x = _rng(7).uniform(-8, 8, (4, 5, 6)).astype(np.float32)
    _check(*_run(_scaled_model(op, x.shape, 0.7, axis=axis, opset=opset), x), op, axis=axis if opset >= 13 else None)


@pytest.mark.parametrize("op", OPS)
def test_all_minus_inf_row_is_uniform(op):
    """A row of -inf (a fully masked row) gives the uniform distribution, the limit of a row of equal values.
    onnxruntime gives NaN there (-inf - -inf): a deliberate difference, so this case is checked on its own."""
    fn, params = to_jax(_scaled_model(op, (2, 3, 4), 1.0), [[2, 3, 4]])
    x = _rng(8).uniform(-2, 2, (2, 3, 4)).astype(np.float32)
    x[0, 1, :] = -np.inf
    x[1, 2, :2] = -np.inf  # partly masked: -inf entries get probability 0 (log: -inf), as onnxruntime gives
    y = np.asarray(jax.jit(fn)(params, {"x": x})["y"])
    uniform = np.float32(0.25) if op == "Softmax" else np.float32(-np.log(4.0))
    np.testing.assert_allclose(y[0, 1], np.full(4, uniform), rtol=1e-6)
    rest = np.ones(y.shape, bool)
    rest[0, 1] = False
    m = _scaled_model(op, (2, 3, 4), 1.0)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y[rest], ref[rest], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op", OPS)
def test_nan_and_plus_inf_propagate(op):
    """NaN or +inf in a row gives NaN for that row, as onnxruntime does (qsens's NaN checks rely on it)."""
    fn, params = to_jax(_scaled_model(op, (1, 3, 4), 1.0), [[1, 3, 4]])
    x = np.zeros((1, 3, 4), np.float32)
    x[0, 0, 1] = np.nan
    x[0, 1, 2] = np.inf
    y = np.asarray(jax.jit(fn)(params, {"x": x})["y"])
    assert np.isnan(y[0, :2]).all()
    assert np.isfinite(y[0, 2]).all()


@pytest.mark.parametrize("op", OPS)
def test_gradient_matches_jax_nn(op):
    """The robust form differentiates like jax.nn's (the clamp at 0 must not halve the gradient at the max)."""
    from qsens.onnx import registry

    impl = registry.OPS[op].impl
    ref = jax.nn.softmax if op == "Softmax" else jax.nn.log_softmax
    x = jax.numpy.asarray(_rng(9).standard_normal((3, 7)).astype(np.float32))
    w = jax.numpy.asarray(_rng(10).standard_normal((3, 7)).astype(np.float32))
    g = jax.grad(lambda v: (impl(jax.numpy, [v], {"axis": -1})[0] * w).sum())(x)
    r = jax.grad(lambda v: (ref(v, axis=-1) * w).sum())(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-6)
