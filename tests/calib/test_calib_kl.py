"""KL threshold search (TV-KL1..5) and agreement with the literal per-candidate port in ref_numpy.py."""

import importlib.util
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsens.calib import histogram as H
from qsens.calib import kl as K

_spec = importlib.util.spec_from_file_location(
    "calib_ref_kl", pathlib.Path(__file__).with_name("ref_numpy.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def _h256(**kw):
    h = np.zeros(256, np.int64)
    h[:128] = 1000
    for k, v in kw.items():
        h[slice(*map(int, k[1:].split("_")))] = v
    return h


def test_tv_kl1_exact_tie_goes_to_smallest_candidate():
    h = _h256()
    np.testing.assert_array_equal(K.kl_divergences([h])[0], [0.0, 0.0])
    assert K.kl_threshold(h, 0.01) == np.float32(0.01) * np.float32(128)


def test_tv_kl2_single_outlier():
    h = _h256(b255_256=1)
    kl = K.kl_divergences([h])[0]
    assert kl[0] > 0 and kl[0] < 1e-6 and kl[1] == 0  # spec (float64): 3.497e-9; float32 noise is larger
    np.testing.assert_allclose(K.kl_threshold(h, 0.01), 2.56, rtol=1e-6)


def test_tv_kl3_uniform_tail():
    h = _h256(b128_256=1)
    kl = K.kl_divergences([h])[0]
    np.testing.assert_allclose(kl[0], 2.645e-5, rtol=1e-2)
    assert kl[1] == 0
    np.testing.assert_allclose(K.kl_threshold(h, 0.01), 2.56, rtol=1e-6)


def test_tv_kl4_exponential():
    k = np.arange(2048)
    h = np.floor(1e6 * np.exp(-k / 100)).astype(np.int64)
    expected = [
        0.420777,
        0.121216,
        0.033939,
        0.00946,
        0.002658,
        0.000784,
        0.000283,
        0.000165,
        0.000156,
        0.000181,
        0.000217,
        0.000259,
        0.000304,
        0.000353,
        0.000405,
        0.000461,
    ]
    np.testing.assert_allclose(K.kl_divergences([h])[0], expected, rtol=1e-3, atol=5e-7)  # spec: 3 digits
    th = K.kl_threshold(h, np.float32(1) / np.float32(2047))
    np.testing.assert_allclose(th, 0.5627748, rtol=1e-6)


def test_tv_kl5_laplace_overshoot():
    x = np.random.default_rng(0).laplace(0, 1, 100000).astype(np.float32)
    amax = np.abs(x).max()
    np.testing.assert_allclose(amax, 11.948867, rtol=1e-6)
    h, w = H.histogram(x, amax)
    np.testing.assert_allclose(w, 0.005837258, rtol=1e-6)
    th = K.kl_threshold(h, w)
    np.testing.assert_allclose(th, 11.954704, rtol=1e-6)  # m* = 15, > abs_max: canonicalize clamps it
    assert th > amax


def _check_against_ref(h, width, bins=128):
    kl = K.kl_divergences([h], bins=bins)[0]
    kl_ref = ref.kl_curve(h, bins)
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-4, atol=1e-7)
    th = K.kl_threshold(h, width, bins=bins)
    th_ref, m_ref = ref.kl_threshold(h, width, bins)
    if th != th_ref:  # only allowed on float32-rounding near-ties
        m = int(round(float(th / np.float32(width)))) // bins - 1
        assert abs(kl_ref[m] - kl_ref[m_ref]) <= 1e-5 * abs(kl_ref[m_ref]) + 1e-7


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**31 - 1), st.sampled_from(["uniform", "sparse", "peaked"]))
def test_random_histograms_match_ref(n_cand, seed, kind):
    rng = np.random.default_rng(seed)
    n = 128 * n_cand
    if kind == "uniform":
        h = rng.integers(0, 50, n)
    elif kind == "sparse":
        h = rng.integers(0, 50, n) * (rng.random(n) < 0.2)
    else:
        h = np.floor(1e4 * np.exp(-np.arange(n) / rng.uniform(5, 200))).astype(np.int64) + rng.integers(
            0, 3, n
        )
    if h.sum() == 0:
        h[0] = 1
    _check_against_ref(h, np.float32(rng.uniform(1e-3, 1.0)))


def test_int4_bins_and_many_tensors_batched():
    rng = np.random.default_rng(7)
    hists = [rng.integers(0, 100, 2048) for _ in range(5)] + [
        rng.integers(0, 100, 640),
        rng.integers(0, 9, 3200),
    ]
    widths = [0.01 * (k + 1) for k in range(len(hists))]
    ths = K.kl_thresholds(hists, widths)
    for h, w, th in zip(hists, widths, ths):
        assert th == K.kl_threshold(h, w)  # batched == one at a time
        assert th == ref.kl_threshold(h, w)[0]
    h8 = rng.integers(0, 100, 64)
    _check_against_ref(h8, np.float32(0.1), bins=8)


def test_bad_inputs():
    with pytest.raises(ValueError, match="multiple of 128"):
        K.kl_divergences([np.ones(100)])
    with pytest.raises(ValueError, match="128"):
        K.kl_divergences([np.ones(128)], bins=16)
    assert K.kl_thresholds([np.zeros(256)], [0.1])[0] == 0.0  # empty histogram
