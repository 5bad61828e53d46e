"""Percentile (TV-P1..3), MSE (TV-M1..3), zero guard, canonicalize, NaN errors."""

import dataclasses
import importlib.util
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsens.calib import methods as M
from qsens.errors import NumericsError

_spec = importlib.util.spec_from_file_location(
    "calib_ref_m", pathlib.Path(__file__).with_name("ref_numpy.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def test_tv_p1_arange():
    assert M.percentile_tail_len(10000, M.percentile_level(0, 1)) == 2
    th, vmin, vmax = M.percentile([np.arange(10000, dtype=np.float32)], 0, 1)
    assert vmax == 9998.0 and th == 9998.0  # float32: 9998.0001 rounds to 9998.0
    np.testing.assert_allclose(vmin, 0.9999, rtol=1e-6)


def test_tv_p2_signed():
    th, vmin, vmax = M.percentile([np.arange(10000, dtype=np.float32) - 5000], 0, 1)
    assert (th, vmin, vmax) == (4999.0, -4999.0, 4998.0)


def test_tv_p3_two_samples_op_ramp():
    rng = np.random.default_rng(1)
    samples = [rng.standard_normal(50000).astype(np.float32) for _ in range(2)]
    per = M.percentile_level(50, 100)
    np.testing.assert_allclose(per, 99.9949995, rtol=1e-12)
    assert M.percentile_tail_len(100000, per) == 6
    th, vmin, vmax = M.percentile(samples, 50, 100)
    np.testing.assert_allclose([th, vmin, vmax], [3.9662852, -3.9269822, 3.9662852], rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3000), st.integers(0, 99), st.integers(0, 2**31 - 1))
def test_percentile_vs_bruteforce_sort(n_samples, size, op_index, seed):
    rng = np.random.default_rng(seed)
    samples = [rng.standard_t(3, size).astype(np.float32) for _ in range(n_samples)]
    got = M.percentile(samples, op_index, 100)
    # brute force: full sort of everything
    per = 99.99 + op_index * (99.999999 - 99.99) / 100
    n = n_samples * size
    length = int(n * (1 - per / 100)) + 1
    allv = np.sort(np.concatenate(samples))
    hi, lo = allv[-length:], allv[:length][::-1]
    r = per / 100 * (n - 1)
    ratio = np.float32(r - int(r))
    if length == 1:
        vmax, vmin = hi[0], lo[0]
    else:
        vmax, vmin = hi[0] + ratio * (hi[1] - hi[0]), lo[0] + ratio * (lo[1] - lo[0])
    assert got == (float(max(abs(vmax), abs(vmin))), float(vmin), float(vmax))
    assert got == tuple(float(v) for v in ref.percentile(samples, op_index, 100))


def test_merge_tails_streaming_equals_oneshot():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(20000).astype(np.float32)
    lo = hi = np.zeros(0, np.float32)
    for chunk in np.split(x, [1000, 5000, 5001, 12000]):
        lo, hi = M.merge_tails(lo, hi, chunk, 37)
    s = np.sort(x)
    np.testing.assert_array_equal(lo, s[:37])
    np.testing.assert_array_equal(hi, s[-37:])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 600), st.integers(1, 60), st.integers(0, 2**31 - 1), st.sampled_from(["normal", "relu", "ties"]))
def test_merge_tails_any_batches_equal_the_sorted_ends(n, length, seed, kind):
    """The first batch's head-only partial sort + filter keeps exactly the ``length`` smallest / largest values of
    everything seen, whatever the batch boundaries (ReLU zeros and heavy ties included)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "ties":
        x = np.round(x * 3).astype(np.float32)
    cuts = np.sort(rng.integers(0, n, size=int(rng.integers(0, 5))))
    lo = hi = np.zeros(0, np.float32)
    for chunk in np.split(x, cuts):
        lo, hi = M.merge_tails(lo, hi, chunk, length)
    s, k = np.sort(x), min(length, n)
    np.testing.assert_array_equal(lo, s[:k])
    np.testing.assert_array_equal(hi, s[-k:])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), st.integers(1, 80), st.integers(1, 60), st.integers(0, 2**31 - 1),
       st.sampled_from(["normal", "relu6", "ties", "one_row_beyond"]))
def test_merge_tails_with_row_bounds_keeps_the_same_values(rows, size, length, seed, kind):
    """With each row's min and max (what the statistics pass), rows that cannot reach a full tail are skipped:
    the kept values are still exactly the ``length`` smallest / largest of everything seen (ReLU6 rows, whose
    tails are all 0 and all 6, skip every later comparison)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(int(rng.integers(1, 5))):
        x = rng.standard_normal((rows, size)).astype(np.float32)
        if kind == "relu6":
            x = np.clip(x * 8, 0, 6)
        elif kind == "ties":
            x = np.round(x * 3).astype(np.float32)
        elif kind == "one_row_beyond":
            x[int(rng.integers(0, rows))] *= 5
        batches.append(x)
    lo = hi = np.zeros(0, np.float32)
    for b in batches:
        lo, hi = M.merge_tails(lo, hi, b, length, b.min(axis=1), b.max(axis=1))
    s = np.sort(np.concatenate([b.ravel() for b in batches]))
    k = min(length, s.size)
    np.testing.assert_array_equal(lo, s[:k])
    np.testing.assert_array_equal(hi, s[-k:])


def test_merge_tails_row_bounds_skip_rows_that_cannot_enter(monkeypatch):
    """Once the tails are full, only rows whose min (max) lies beyond them are compared."""
    full = np.arange(100, dtype=np.float32).reshape(4, 25)
    lo, hi = M.merge_tails(np.zeros(0, np.float32), np.zeros(0, np.float32), full, 5)
    batch = np.full((3, 25), 50, np.float32)
    batch[1, 7] = -1  # only row 1 can enter lo, nothing can enter hi
    compared = []
    beyond = M._beyond
    monkeypatch.setattr(M, "_beyond", lambda rows, look, *a: compared.append(np.flatnonzero(look).tolist())
                        or beyond(rows, look, *a))
    got_lo, got_hi = M.merge_tails(lo, hi, batch, 5, batch.min(axis=1), batch.max(axis=1))
    assert compared == [[1], []]
    np.testing.assert_array_equal(got_lo, [-1, 0, 1, 2, 3])
    np.testing.assert_array_equal(got_hi, hi)


def test_tv_m1_m2_m3():
    np.testing.assert_allclose(M.mse_sample(np.array([1, 2, 3, 4, 100], np.float32)), 99.99796, rtol=1e-6)
    np.testing.assert_allclose(M.mse_sample(np.array([0, 1, 2, 3, 4, 100], np.float32)), 99.99937, rtol=1e-6)
    g = np.random.default_rng(2).standard_normal(100000).astype(np.float32)
    np.testing.assert_allclose(M.mse_sample(g), 4.018342, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2000), st.integers(0, 2**31 - 1), st.booleans())
def test_mse_matches_ref_bit_exact(size, seed, relu):
    x = np.random.default_rng(seed).laplace(0, 2, size).astype(np.float32)
    if relu:
        x = np.maximum(x, 0)
    if not np.any(x):
        x[0] = 1
    assert M.mse_sample(x) == ref.threshold_mse(x)
    assert M.mse_batch(np.stack([x, 2 * x]))[1] == ref.threshold_mse(2 * x)


def test_mse_all_zero_sample_is_zero():
    assert M.mse_sample(np.zeros(10, np.float32)) == 0
    assert np.isnan(ref.threshold_mse(np.zeros(10, np.float32)))  # TPU-MLIR: 0/0, documented deviation


def _result(**kw):
    base = dict(
        min=-1.0,
        max=2.0,
        abs_max=2.0,
        kl=1.0,
        p99=1.5,
        p99_min=-0.9,
        p99_max=1.5,
        mse=1.2,
        histogram=np.zeros(2048, np.int64),
        width=2 / 2047,
    )
    base.update(kw)
    return M.CalibResult(**base)


def test_canonicalize_clamps():
    r = M.canonicalize(_result(abs_max=3.0, kl=2.0009, p99=5.0, mse=9.0, p99_min=-2.0, p99_max=2.5))
    assert r.abs_max == 2.0 and r.kl == 2.0 and r.p99 == 2.0 and r.mse == 2.0
    assert r.p99_min == -1.0 and r.p99_max == 2.0
    assert M.canonicalize(_result()).kl == 1.0


def test_zero_guard():
    r = M.zero_guard(_result(min=-3e-6, max=1e-6, abs_max=3e-6, kl=0.0, p99=0.0, mse=0.0))
    assert (r.min, r.max, r.abs_max, r.kl, r.p99, r.mse) == (-1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5)
    r = M.zero_guard(_result(min=0.0, max=0.0, abs_max=0.0))
    assert (r.min, r.max, r.abs_max) == (0.0, 1e-5, 1e-5)
    unchanged = _result()
    assert M.zero_guard(unchanged) is unchanged
    assert M.table_threshold(float("nan")) == 1e-5 and M.table_threshold(3e-6) == 1e-5
    assert M.table_threshold(0.5) == 0.5


def test_get_threshold():
    r = _result()
    assert [r.threshold(m) for m in ("max", "percentile9999", "kl", "mse")] == [2.0, 1.5, 1.0, 1.2]
    assert r.threshold("KL") == 1.0
    with pytest.raises(ValueError, match="unknown calibration method"):
        r.threshold("aciq")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.kl = 3.0


def test_nan_error_names_tensor_and_sample():
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(
        NumericsError, match=r"NaN in activation of tensor 'conv1' at calibration sample 12:"
    ) as e:
        M.check_finite("conv1", x, sample_offset=10)
    assert "\n" not in str(e.value)
    x[2, 1] = np.inf
    with pytest.raises(NumericsError, match="Inf .* sample 2"):
        M.check_finite("relu", x)
    M.check_finite("ok", np.ones((2, 2)))
