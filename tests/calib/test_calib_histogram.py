"""Histogram binning (TV-H1), v1/v2 accumulation (TV-C1), reset, KL preparation; oracle: ref_numpy.py."""

import importlib.util
import pathlib
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsens.calib import histogram as H

_spec = importlib.util.spec_from_file_location(
    "calib_ref_h", pathlib.Path(__file__).with_name("ref_numpy.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def test_tv_h1_bins_and_width():
    h, w = H.histogram(np.array([0, 0.1, -0.5, 1.0, 0.25], np.float32), np.float32(1.0))
    assert w == np.float32(1) / np.float32(2047)
    np.testing.assert_allclose(w, 4.885198e-4, rtol=1e-6)
    assert h.sum() == 4  # the zero is counted nowhere
    np.testing.assert_array_equal(np.nonzero(h)[0], [205, 512, 1024, 2047])
    # float32 subtlety: 0.5/(1/2047)+0.5 == 1024.0 exactly in float32
    assert np.float32(0.5) / w + np.float32(0.5) == np.float32(1024.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=300),
    st.sampled_from([16, 128, 2048, 3073]),
)
def test_histogram_matches_np_histogram(values, n_bins):
    a = np.array(values, np.float32)
    amax = np.abs(a).max()
    h, w = H.histogram(a, amax, n_bins)
    h_ref, w_ref = ref.histogram(a, amax, n_bins)
    assert w == w_ref
    np.testing.assert_array_equal(h, h_ref)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=4, max_size=240),
    st.sampled_from([16, 128, 2048, 3073]),
    st.integers(1, 4),
    st.data(),
)
def test_device_histogram_rows_equal_numpy(values, n_bins, rows, data):
    """The counts the calibration accumulates (``histogram_rows``, on the device) == the NumPy ``histogram`` of the
    same rows, bit for bit: any row range (one row: its own executable), the float32 edge remap, zeros, -0.0,
    values beyond the range (dropped), a bin count that is not a power of two."""
    a = np.array(values[: len(values) // rows * rows], np.float32).reshape(rows, -1)
    a[np.abs(a) < np.finfo(np.float32).tiny] = 0.0  # subnormals: see the next test
    a[0, 0] = -0.0
    lo = data.draw(st.integers(0, rows - 1))
    hi = data.draw(st.integers(lo + 1, rows))
    amax = np.float32(np.abs(a).max() * data.draw(st.sampled_from([1.0, 0.5])))  # 0.5: half the values overflow
    h, w = H.histogram_rows(a, lo, hi, amax, n_bins)
    h_np, w_np = H.histogram(a[lo:hi], amax, n_bins)
    assert w == w_np and h.dtype == np.int64
    np.testing.assert_array_equal(h, h_np)


@pytest.mark.parametrize("n_bins", [16, 2048])
def test_device_histogram_with_a_subnormal_bin_width_equals_numpy(n_bins):
    """An abs-max so small that ``abs_max / (n_bins - 1)`` is a float32 subnormal (found by hypothesis: values
    [0, 0, 0, FLT_MIN]): XLA's CPU flushes that width to 0 and would drop every value; the counts come from NumPy."""
    tiny = np.finfo(np.float32).tiny
    a = np.array([[0.0, 0.0, 0.0, tiny], [tiny, tiny / 2 + tiny, 0.0, 2 * tiny]], np.float32)
    for amax in (np.float32(tiny), np.float32(2 * tiny)):
        h, w = H.histogram_rows(a, 0, 2, amax, n_bins)
        h_np, w_np = H.histogram(a, amax, n_bins)
        assert w == w_np
        np.testing.assert_array_equal(h, h_np)
        assert h.sum() > 0


def test_device_histogram_subnormals_count_as_zero():
    """The documented difference: NumPy counts a float32 subnormal in bin 0, the device path (XLA's CPU flushes
    denormals) drops it like a zero; and qsens's forward never hands one over (XLA flushes its results)."""
    a = np.array([[0.0, 1.0, 1.401298464324817e-45, -1e-40]], np.float32)
    h, _ = H.histogram_rows(a, 0, 1, np.float32(1.0), 16)
    assert h[0] == 0 and H.histogram(a, np.float32(1.0), 16)[0][0] == 2
    np.testing.assert_array_equal(h[1:], H.histogram(a, np.float32(1.0), 16)[0][1:])
    import jax.numpy as jnp

    y = np.asarray(jnp.asarray(a) * jnp.float32(0.5))  # an XLA op's output
    assert y[0, 2] == 0 and y[0, 3] == 0


def test_device_histogram_exact_division():
    """The case that needs the exact division: XLA's x * (1/width) puts some t = (k - 0.5) * width one bin off."""
    w = np.float32(1) / np.float32(2047)
    t = ((np.arange(1, 2048, dtype=np.float32) - np.float32(0.5)) * w).reshape(1, -1)
    np.testing.assert_array_equal(H.histogram_rows(t, 0, 1, np.float32(1.0))[0], H.histogram(t, np.float32(1.0))[0])


def test_exact_half_ties_follow_float32():
    # values exactly at bin edges: k = floor(t/width + 0.5) in float32
    w = np.float32(1) / np.float32(2047)
    t = (np.arange(1, 200, dtype=np.float32) - np.float32(0.5)) * w
    h, _ = H.histogram(t, np.float32(1.0))
    h_ref, _ = ref.histogram(t, np.float32(1.0))
    np.testing.assert_array_equal(h, h_ref)


def test_tv_c1_combine_growth():
    s = H.HistState(np.zeros(2048, np.int64), np.float32(1.0), np.float32(1) / np.float32(2047))
    s = H.combine_histogram(s, np.array([1.5], np.float32), 1.5)
    assert s.hist.size == 3073
    assert float(s.th) == 1.50048828125
    np.testing.assert_allclose(s.width, 4.884402e-4, rtol=1e-6)
    hp, _ = H.prepare_for_kl(s.hist, s.width)
    assert hp.size == 3200


def _stream(samples):
    s = H.empty_state()
    run = np.float32(0)
    for a in samples:
        run = max(run, np.abs(a).max())
        s = H.combine_histogram(s, a, run)
    return s


def test_v2_three_sample_growing_stream_matches_ref():
    rng = np.random.default_rng(3)
    samples = [rng.standard_normal(5000).astype(np.float32) * sc for sc in (1.0, 1.7, 3.1)]
    s = _stream(samples)
    h_ref, w_ref, th_ref = ref.stream_v2(samples)
    np.testing.assert_array_equal(s.hist, h_ref)
    assert s.width == w_ref and s.th == th_ref
    assert s.hist.size > 2048  # it really grew twice
    assert s.hist.sum() == sum(np.count_nonzero(x) for x in samples)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.05, 20.0), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_v2_batched_update_equals_per_sample_ref(scales, seed):
    rng = np.random.default_rng(seed)
    samples = np.stack([rng.laplace(0, 1, 700).astype(np.float32) * np.float32(sc) for sc in scales])
    running = np.maximum.accumulate(np.abs(samples).max(axis=1)).astype(np.float32)
    s = H.v2_update(H.empty_state(), samples, running)
    h_ref, w_ref, th_ref = ref.stream_v2(list(samples))
    np.testing.assert_array_equal(s.hist, h_ref)
    assert s.width == w_ref and s.th == th_ref


def test_v2_reset_above_8m_bins():
    s = _stream([np.array([1e-6], np.float32)])
    with pytest.warns(UserWarning, match="discarded"):
        s2 = H.combine_histogram(s, np.array([10.0], np.float32), 10.0)
    assert s2.hist.size == 2048 and s2.th == np.float32(10.0)
    assert s2.hist.sum() == 1  # the old sample is gone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h_ref, _, _ = ref.combine_histogram((s.hist, s.width, s.th), np.array([10.0], np.float32), 10.0)
    np.testing.assert_array_equal(s2.hist, h_ref)


def test_v1_order_independent():
    rng = np.random.default_rng(4)
    samples = [rng.standard_normal(3000).astype(np.float32) * sc for sc in (0.5, 2.0, 1.0, 4.0)]
    amax = max(np.abs(x).max() for x in samples)
    a = H.empty_state()
    for x in samples:
        a = H.v1_update(a, x, amax)
    b = H.v1_update(H.empty_state(), np.concatenate(samples[::-1]), amax)
    np.testing.assert_array_equal(a.hist, b.hist)
    assert a.hist.size == 2048 and a.hist.sum() == 12000
    np.testing.assert_array_equal(a.hist, sum(ref.histogram(x, amax)[0] for x in samples))


def test_prepare_for_kl_pads_and_halves():
    h = np.arange(131072 + 5, dtype=np.int64)
    hp, wp = H.prepare_for_kl(h, np.float32(0.5))
    h_ref, w_ref = ref.pad_and_halve(h, np.float32(0.5))
    np.testing.assert_array_equal(hp, h_ref)
    assert wp == w_ref == np.float32(1.0)
    assert hp.size % 128 == 0 and hp.size <= 131072 and hp.sum() == h.sum()
    h2, w2 = H.prepare_for_kl(np.ones(2048, np.int64), 0.25)
    assert h2.size == 2048 and w2 == np.float32(0.25)
    h3, _ = H.prepare_for_kl(h, 0.5, max_bins=None)  # KLD-mid: no halving
    assert h3.size == 131200


def test_all_zero_sample_is_empty_histogram():
    h, _ = H.histogram(np.zeros(10, np.float32), 0.0)
    assert h.sum() == 0 and h.size == 2048


def test_v2_all_zero_start_then_growth_restarts():
    # TPU-MLIR would divide by a zero step here; qsens starts a fresh 2048-bin histogram (no counts are lost).
    s = H.combine_histogram(H.empty_state(), np.zeros(4, np.float32), 0.0)
    assert s.hist.sum() == 0
    s = H.combine_histogram(s, np.array([0.5, -1.0], np.float32), 1.0)
    np.testing.assert_array_equal(s.hist, ref.histogram(np.array([0.5, -1.0]), 1.0)[0])
    assert s.th == np.float32(1.0)
