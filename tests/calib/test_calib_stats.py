"""Streaming collector: v2 single pass and v1 two passes vs the per-sample reference pipeline."""

import importlib.util
import pathlib

import numpy as np
import pytest

from qsens import calib
from qsens.calib import stats as S
from qsens.errors import NumericsError

_spec = importlib.util.spec_from_file_location(
    "calib_ref_s", pathlib.Path(__file__).with_name("ref_numpy.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

NAMES = ("inp", "conv", "relu")


def _data(n_img=6, seed=0):
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 0.6, 2.5, 1.1, 3.0, 0.9], np.float32)[:n_img, None, None, None]
    inp = rng.uniform(-1, 1, (n_img, 3, 8, 8)).astype(np.float32)
    conv = (rng.standard_normal((n_img, 4, 6, 6)) * scale).astype(np.float32)
    return {"inp": inp, "conv": conv, "relu": np.maximum(conv, 0)}


def _feed(state, data, batch):
    n = next(iter(data.values())).shape[0]
    for off in range(0, n, batch):
        state = S.update(state, {k: v[off : off + batch] for k, v in data.items()}, off)
    return state


def _expected(data, name, op_index, n_ops, mode):
    x = data[name]
    samples = list(x)
    amax = np.float32(max(abs(x.min()), abs(x.max())))
    if mode == "v2":
        h, w, _ = ref.stream_v2(samples)
    else:
        h = sum(ref.histogram(s, amax)[0] for s in samples)
        w = np.float32(amax) / np.float32(2047)
    hp, wp = ref.pad_and_halve(h, w)
    kl, _ = ref.kl_threshold(hp, wp)
    p99, pmin, pmax = ref.percentile(samples, op_index, n_ops)
    mse = np.mean([np.float64(ref.threshold_mse(s)) for s in samples])
    return dict(
        abs_max=float(amax),
        kl=min(float(kl), float(amax)),
        p99=min(float(p99), float(amax)),
        p99_min=float(pmin),
        p99_max=float(pmax),
        mse=min(float(mse), float(amax)),
        hist=h,
        width=w,
    )


@pytest.mark.parametrize("batch", [1, 4, 6])
def test_v2_matches_per_sample_reference(batch):
    data = _data()
    st = S.init(NAMES, 3, n_samples=6, mode="v2")
    res = S.finalize(_feed(st, data, batch))
    for i, name in enumerate(NAMES):
        e, r = _expected(data, name, i, 3, "v2"), res[name]
        np.testing.assert_array_equal(r.histogram, e["hist"])
        assert r.width == pytest.approx(float(e["width"]), rel=1e-7)
        assert r.min == float(data[name].min()) and r.max == float(data[name].max())
        for f in ("abs_max", "kl", "p99", "p99_min", "p99_max"):
            assert getattr(r, f) == pytest.approx(e[f], rel=1e-6), (name, f)
        assert r.mse == pytest.approx(e["mse"], rel=1e-6)
    assert res["conv"].histogram.size > 2048  # v2 really grew


def test_v1_two_pass_and_order_independence():
    data = _data()
    st = _feed(S.init(NAMES, 3, n_samples=6, mode="v1"), data, 4)
    with pytest.raises(ValueError, match="begin_histograms"):
        S.finalize(st)
    st = S.begin_histograms(st)
    res = S.finalize(_feed(st, data, 4))
    for i, name in enumerate(NAMES):
        e, r = _expected(data, name, i, 3, "v1"), res[name]
        np.testing.assert_array_equal(r.histogram, e["hist"])
        assert r.histogram.size == 2048
        assert r.kl == pytest.approx(e["kl"], rel=1e-6)
    # pass 2 in another order gives the same histogram
    perm = np.array([5, 2, 0, 4, 1, 3])
    st2 = S.begin_histograms(_feed(S.init(NAMES, 3, n_samples=6, mode="v1"), data, 4))
    res2 = S.finalize(_feed(st2, {k: v[perm] for k, v in data.items()}, 1))
    for name in NAMES:
        np.testing.assert_array_equal(res2[name].histogram, res[name].histogram)
        assert res2[name].kl == res[name].kl


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_without_percentile_no_tails_are_kept_and_the_rest_is_equal(mode):
    """``tails=False`` (no Percentile9999 asked for): p99 is NaN, the tails stay empty except for MSE's last-five
    tensors (their rule reads them), every other statistic equals the full run's."""
    data = _data()

    def run(**kw):
        st = _feed(S.init(NAMES, 3, n_samples=6, mode=mode, mse_tail=[("relu", False)], **kw), data, 4)
        if mode == "v1":
            st = _feed(S.begin_histograms(st), data, 4)
        return st, S.finalize(st)

    (full_st, full), (st, res) = run(), run(tails=False)
    assert st.tensors["conv"].lo.size == 0 and st.tensors["conv"].hi.size == 0
    assert full_st.tensors["conv"].hi.size > 0
    np.testing.assert_array_equal(st.tensors["relu"].hi, full_st.tensors["relu"].hi)  # MSE's tail rule
    for name in NAMES:
        a, b = res[name], full[name]
        assert np.isnan(a.p99) and np.isnan(a.p99_min) and np.isnan(a.p99_max) and not np.isnan(b.p99)
        for f in ("min", "max", "abs_max", "kl", "mse", "width"):
            assert getattr(a, f) == getattr(b, f), (name, f)
        np.testing.assert_array_equal(a.histogram, b.histogram)


def test_op_index_and_absmax_mse():
    data = _data()
    st = S.init(NAMES, 100, n_samples=6, op_index={"inp": 0, "conv": 1, "relu": 99}, absmax_mse={"inp"})
    res = S.finalize(_feed(st, data, 3))
    assert res["inp"].mse == res["inp"].abs_max
    e = _expected(data, "relu", 99, 100, "v2")
    assert res["relu"].p99 == pytest.approx(e["p99"], rel=1e-6)


def test_fewer_samples_than_declared_and_errors():
    data = _data()
    st = S.init(NAMES, 3, n_samples=10)
    res = S.finalize(_feed(st, data, 2))  # L from 10 declared >= L needed for 6 seen
    e = _expected(data, "conv", 1, 3, "v2")
    assert res["conv"].p99 == pytest.approx(e["p99"], rel=1e-6)
    with pytest.raises(ValueError, match="more samples"):
        _feed(S.init(NAMES, 3, n_samples=2), data, 3)
    with pytest.raises(KeyError, match="not declared"):
        S.update(S.init(NAMES, 3, n_samples=2), {"other": np.ones((1, 2))})
    with pytest.raises(ValueError, match="no samples"):
        S.finalize(S.update(S.init(NAMES, 3, n_samples=2), {"inp": np.ones((1, 2))}))


def test_update_is_pure():
    data = _data()
    st0 = S.init(NAMES, 3, n_samples=12)
    st1 = _feed(st0, data, 3)
    assert all(t.n_seen == 0 for t in st0.tensors.values())
    h_before = st1.tensors["conv"].hist.hist.copy()
    _feed(st1, _data(seed=1), 6)
    np.testing.assert_array_equal(st1.tensors["conv"].hist.hist, h_before)


def test_zero_tensor_guard_end_to_end():
    z = np.zeros((3, 5), np.float32)
    z[1, 2] = -2e-6
    res = calib.finalize(calib.update(calib.init(["z"], 1, n_samples=3), {"z": z}))
    r = res["z"]
    assert (r.min, r.max, r.abs_max, r.kl, r.p99, r.mse) == (-1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5)


def test_nan_in_batch_names_sample_index():
    data = _data()
    data["relu"][3, 0, 1, 1] = np.nan
    st = S.init(NAMES, 3, n_samples=6)
    st = S.update(st, {k: v[:2] for k, v in data.items()}, 0)
    with pytest.raises(NumericsError, match="tensor 'relu' at calibration sample 3"):
        S.update(st, {k: v[2:] for k, v in data.items()}, 2)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
@pytest.mark.parametrize("mode", ["v2", "v1"])
def test_non_finite_values_are_found_from_the_per_sample_extremes(bad, word, mode):
    """The check reads the per-sample min/max the statistics compute anyway (NaN propagates through both, +-Inf is
    an extreme); a bad value in v1's second pass (its histograms) is found the same way."""
    data = _data()
    bad_data = {k: v.copy() for k, v in data.items()}
    bad_data["conv"][4, 2, 3, 1] = bad
    st = S.init(NAMES, 3, n_samples=6, mode=mode)
    if mode == "v1":  # pass 1 on good data, the bad value in pass 2
        st = S.begin_histograms(_feed(st, data, 3))
    st = S.update(st, {k: v[:3] for k, v in bad_data.items()}, 0)
    with pytest.raises(NumericsError, match=f"^{word} in activation of tensor 'conv' at calibration sample 4:"):
        S.update(st, {k: v[3:] for k, v in bad_data.items()}, 3)


def test_kl_threshold_clamped_to_absmax():
    x = np.random.default_rng(0).laplace(0, 1, (1, 100000)).astype(np.float32)  # TV-KL5 as one sample
    res = calib.finalize(calib.update(calib.init(["t"], 1, n_samples=1), {"t": x}))["t"]
    np.testing.assert_allclose(res.abs_max, 11.948867, rtol=1e-6)
    assert res.kl == res.abs_max


def test_v1_adopts_exactly_the_v2_histograms_that_never_grew():
    """A v2 state fed the same samples holds v1's pass-2 histogram of every tensor whose range never grew (first
    non-zero sample holds the abs-max); those are adopted, equal to a real pass 2, and the rest are left to it:
    a grown range, a reset history (> RESET_BINS), a tensor whose first sample is all zeros (no growth: adopted)."""
    rng = np.random.default_rng(3)
    n = 6
    peak_first = rng.uniform(-1, 1, (n, 5, 7)).astype(np.float32)
    peak_first[0, 0, 0] = 6.0  # ReLU6-like: the first sample reaches the range
    grows = rng.uniform(-1, 1, (n, 5, 7)).astype(np.float32)
    grows[3, 1, 1] = 4.0
    reset = rng.uniform(-1e-4, 1e-4, (n, 5, 7)).astype(np.float32)
    reset[2] *= 1e5  # 8e6+ bins of the first range's step: TPU-MLIR's history reset
    reset[0, 2, 2] = 2e-4  # the first sample holds the final maximum... of the reset history, not of sample 0
    reset[2, 0, 0] = 10.0
    zeros_first = rng.uniform(-1, 1, (n, 5, 7)).astype(np.float32)
    zeros_first[0] = 0.0
    zeros_first[1, 0, 0] = 3.0
    data = {"peak": peak_first, "grows": grows, "reset": reset, "zeros": zeros_first}
    names = tuple(data)
    with pytest.warns(UserWarning, match="discarded"):
        v2 = _feed(S.init(names, 4, n_samples=n, mode="v2"), data, 4)
    v1 = S.begin_histograms(_feed(S.init(names, 4, n_samples=n, mode="v1"), data, 4))
    adopted_state, adopted = S.adopt_v2_histograms(v1, v2)
    assert adopted == {"peak", "zeros"}
    assert v2.tensors["reset"].hist.grown and v2.tensors["grows"].hist.grown
    assert v2.tensors["reset"].hist.hist.size == 2048  # a reset history is N bins again, yet not v1's
    full = S.finalize(_feed(v1, data, 4))  # the real pass 2 of every tensor
    rest = {k: v for k, v in data.items() if k not in adopted}
    mixed = S.finalize(_feed(adopted_state, rest, 2))  # pass 2 of the others only
    for name in names:
        np.testing.assert_array_equal(mixed[name].histogram, full[name].histogram)
        assert mixed[name].kl == full[name].kl and mixed[name].width == full[name].width
    # a v1 state that has started pass 2, or another bin count, adopts nothing
    assert S.adopt_v2_histograms(_feed(v1, data, 4), v2)[1] == frozenset()
    other = S.begin_histograms(_feed(S.init(names, 4, n_samples=n, mode="v1", n_bins=1024), data, 4))
    assert S.adopt_v2_histograms(other, v2)[1] == frozenset()
