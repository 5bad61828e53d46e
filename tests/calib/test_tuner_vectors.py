"""The PRODUCTION SimpleTuner against the spec's tuner vectors (§2.6, §8).

Tested here are the functions ``qsens.calibrate.calibrate`` actually runs: ``qsens.calibrate.fake_quant_rows``
(the tuner's device fake quant) and its host twin ``fake_quant_np``, ``qsens.calib.tune_candidates`` / ``qsens.calib.select`` (grid and choice) and
``qsens.calibrate.tune`` itself (the distance, the mean over samples, which inputs are fake-quantized, the
upward-only table).  ``tests/calib/test_calib_tuner.py`` tests the jnp ``tuner_math.fake_quant`` /
``distance`` / ``mean_distance``, which production does not call.

Vectors: TV-R3 and TV-IQB (fake quant, half to even), TV-D (distance, through ``tune``), TV-G (grid), the
§2.6 skip rule (``step > 0`` and ``|amax - th0| > 0.01``), the strict-``<`` choice (k=0 initialises, ties
keep the earlier candidate), ``table = max(table, best)`` and the re-tune from the initial threshold.

The oracle of the property test is exact rational arithmetic (``fractions.Fraction``) with explicit
round-to-nearest-even into float32 at each step NumPy rounds (TPU-MLIR ``import_quant_bias`` on a float32
array: ``scale = 127/threshold`` as a Python float, cast to float32 by NumPy; ``round(value*scale)`` half to
even; clip to [-128, 127]; ``value /= scale``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import helper

import qsens.calib
from qsens.calib import select, tune_candidates
from qsens.calibrate import calibrate, fake_quant_np, fake_quant_rows, round_table, tune
from qsens.onnx import to_jax
from tests.onnx_builders import make_model, vi


# ------------------------------------------------------------------------------------------ exact oracle
def f32(fr: Fraction) -> np.float32:
    """``fr`` rounded to the nearest float32, ties to even (no double rounding)."""
    f = np.float32(float(fr))  # within one float32 ulp of the answer
    best = None
    for c in (f, np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))):
        if not np.isfinite(c):
            continue
        key = (abs(Fraction(float(c)) - fr), int(np.float32(c).view(np.uint32)) & 1)
        if best is None or key < best[0]:
            best = (key, np.float32(c))
    return best[1]


def fq_oracle(x, th: float) -> np.ndarray:
    """TPU-MLIR ``import_quant_bias(x, th)`` on a float32 array, exactly."""
    s = f32(Fraction(127 / float(th)))  # the Python float 127/th, then NumPy's cast to float32
    out = []
    for v in np.asarray(x, np.float32).ravel():
        p = f32(Fraction(float(v)) * Fraction(float(s)))  # float32 multiply
        q = min(127, max(-128, round(Fraction(float(p)))))  # round(Fraction) = half to even
        out.append(f32(Fraction(q) / Fraction(float(s))))  # float32 divide
    return np.array(out, np.float32).reshape(np.shape(x))


def first_argmin(d) -> int:
    """SimpleTuner's choice: k=0 initialises, a later k wins only if strictly smaller."""
    best = 0
    for k in range(1, len(d)):
        if d[k] < d[best]:
            best = k
    return best


def dist64(ref, out) -> float:
    """``||ref - out||_2 / ||ref||_1`` of one sample, exact sums (math.fsum)."""
    r = np.asarray(ref, np.float64).ravel()
    e = r - np.asarray(out, np.float64).ravel()
    return math.sqrt(math.fsum(e * e)) / math.fsum(np.abs(r))


# ------------------------------------------------------------------------------------------ fake quant
def test_tv_r3_numpy_rounding_half_to_even():
    # th = 127: scale exactly 1, so the output is the rounded integer itself
    got = fake_quant_np(np.array([0.5, 1.5, 2.5, -2.5], np.float32), 127.0)
    assert got.dtype == np.float32
    assert got.tolist() == [0.0, 2.0, 2.0, -2.0]


def test_tv_iqb_threshold_1():
    x = np.array([0.5, 1.0, -2.0, 0.0199, 0.0197], np.float32)
    got = fake_quant_np(x, 1.0)
    # spec values (6 digits)
    np.testing.assert_allclose(got, [0.503937, 1.0, -1.007874, 0.023622, 0.023622], rtol=0, atol=5e-7)
    # exactly q / float32(127): 0.5*127 = 63.5 -> 64 (even), 1.0 -> 127, -2.0 -> -254 clipped to -128,
    # 0.0199*127 = 2.527 -> 3, 0.0197*127 = 2.502 -> 3
    s = np.float32(127.0)
    assert got.tolist() == [np.float32(q) / s for q in (64, 127, -128, 3, 3)]
    assert got.tolist() == fq_oracle(x, 1.0).tolist()


def test_tv_iqb_half_to_even_and_saturation_threshold_127():
    got = fake_quant_np(np.array([2.5, 3.5, -2.5, 200, -200], np.float32), 127.0)
    assert got.tolist() == [2.0, 4.0, -2.0, 127.0, -128.0]  # C++ RHAZ would give 3 and -3


def test_tuner_math_truth_table_through_production():
    # the table in qsens/calib/tuner_math.py's docstring, on the host function production uses
    got = fake_quant_np(np.array([0.5, 1.5, 2.5, -2.5, 63.5, 200, -200], np.float32), 127.0)
    assert got.tolist() == [0, 2, 2, -2, 64, 127, -128]


ths = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
f32s = st.floats(min_value=-2e3, max_value=2e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(xs=st.lists(f32s, min_size=1, max_size=32), th=ths)
@example(xs=[0.5, 1.0, -2.0, 0.0199, 0.0197], th=1.0)
@example(xs=[2.5, 3.5, -2.5, 200.0, -200.0, -0.0], th=127.0)
def test_fake_quant_equals_exact_oracle(xs, th):
    x = np.array(xs, np.float32)
    got = fake_quant_np(x, th)
    want = fq_oracle(x, th)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@settings(max_examples=200, deadline=None)
@given(xs=st.lists(f32s, min_size=2, max_size=24), th=ths, th2=ths, data=st.data())
@example(xs=[2.5, 3.5, -2.5, 200.0, -200.0, -0.0], th=127.0, th2=1.0, data=None)
@example(xs=[1.0, -2.0, 2.5, 0.0], th=63.6, th2=64.39999999999999, data=None)  # XLA's x * (1/s) is 1 ulp off here
def test_device_fake_quant_rows_equal_oracle(xs, th, th2, data):
    """The device path ``tune`` runs (``fake_quant_rows``: gathered rows, one threshold per row, broadcast over
    each row's elements) equals the exact oracle bit for bit, including ties (half to even) and saturation."""
    x = np.array(xs, np.float32)
    src = np.stack([x, -x, x[::-1]], axis=1)  # rows of 3 elements: the per-row scale is broadcast
    idx = np.array([0, len(xs) - 1, 1] if data is None else
                   data.draw(st.lists(st.integers(0, len(xs) - 1), min_size=1, max_size=6)), np.int32)
    row_th = [th if r % 2 == 0 else th2 for r in range(len(idx))]
    scale = np.array([np.float32(127.0 / float(t)) for t in row_th], np.float32)
    got = np.asarray(fake_quant_rows(src, idx, scale))
    want = np.stack([fq_oracle(src[i], t) for i, t in zip(idx, row_th)])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@settings(max_examples=200, deadline=None)
@given(k=st.integers(-300, 300), j=st.integers(-6, 6))
def test_fake_quant_exact_ties_round_to_even(k, j):
    # th = 127 / 2**j: scale 2**j exactly, x = (k + 0.5) / 2**j exactly, so x*scale = k + 0.5 is a tie
    th = 127.0 / 2.0**j
    x = np.array([(k + 0.5) / 2.0**j], np.float32)
    q = min(127, max(-128, k + (k % 2)))  # the even neighbour of k + 0.5 is k if k even, else k + 1
    assert fake_quant_np(x, th).tolist() == [q / 2.0**j]


# ------------------------------------------------------------------------------------------ grid and choice
def test_tv_g_grid():
    c = tune_candidates(2.0, 4.1)
    assert c.shape == (22,) and c.dtype == np.float64
    step = (4.1 - 2.0) / 21  # Python float arithmetic, as SimpleTuner: th_min + step * i
    assert c.tolist() == [2.0 + step * k for k in range(22)]
    assert c[0] == 2.0 and c[-1] == pytest.approx(4.1, abs=1e-15)
    np.testing.assert_allclose(np.diff(c), 0.1, rtol=1e-12)


@pytest.mark.parametrize("th0, amax, tuned", [
    (2.0, 2.0, False),      # step = 0
    (3.0, 2.0, False),      # amax < th0: step < 0 (threshold > abs_max: never tuned)
    (2.0, 2.005, False),    # |amax - th0| = 0.005 <= min_tuned_diff
    (1.0, 1.0099, False),
    (1.0, 1.01, True),      # 1.01 - 1.0 = 0.010000000000000009 > 0.01 in float64: tuned (as TPU-MLIR)
    (1.0, 1.02, True),
    (1e-5, 1.0, True),      # zero-guarded threshold, real abs_max
])
def test_min_range(th0, amax, tuned):
    c = tune_candidates(th0, amax)
    assert c.size == (22 if tuned else 0)
    if not tuned:
        assert select(th0, c, np.zeros(0)) == th0


def test_select_strict_first_wins_and_upward_only():
    c = tune_candidates(1.0, 3.1)
    d = np.full(22, 0.5)
    assert select(1.0, c, d) == 1.0  # all equal: k=0 keeps
    d[0] = 0.1
    assert select(1.0, c, d) == 1.0  # k=0 best
    d = np.full(22, 0.5)
    d[[4, 9]] = 0.2  # tie at the minimum: the first wins
    assert select(1.0, c, d) == c[4]
    d[9] = 0.2 - 1e-12  # strictly smaller: the later wins
    assert select(1.0, c, d) == c[9]
    assert select(1.0, c, d, current=3.5) == 3.5  # the table threshold only grows
    assert select(1.0, c, d, current=1.05) == c[9]
    assert select(1.0, c, d, current=c[9]) == c[9]


# ------------------------------------------------------------------------------------------ tune() itself
def _model(nodes, inputs, outputs, width=4):
    fn, _ = to_jax(make_model(nodes, [vi(n, ["N", width]) for n in inputs], [vi(n, ["N", width]) for n in outputs]))
    return fn.model, fn.graph


@pytest.fixture()
def spy(monkeypatch):
    """Record every ``calib.select`` call ``tune`` makes: (th0, candidates, distances, current, result)."""
    calls = []
    real = qsens.calib.select

    def wrapped(th0, cands, dists, *, current=None):
        r = real(th0, cands, dists, current=current)
        calls.append((th0, np.array(cands), np.array(dists), current, r))
        return r

    monkeypatch.setattr(qsens.calib, "select", wrapped)
    return calls


@pytest.fixture(scope="module")
def add_model():
    return _model([helper.make_node("Add", ["a", "b"], ["y"], name="add")], ["a", "b"], ["y"])


def test_tv_d_distance_and_mean_over_samples(add_model, spy):
    model, g = add_model
    (y,) = [t for t in g.tensors if t not in ("a", "b")]
    # th0 = 63.5: scale 127/63.5 = 2 exactly, so k=0 leaves these inputs unchanged (grid 0.5)
    acts = {
        "a": np.array([[1, -2, 2.5, 0], [2, 0, 0, 0]], np.float32),
        "b": np.zeros((2, 4), np.float32),
        y: np.array([[1, -2, 3, 0], [1, 0, 0, 0]], np.float32),  # the FP32 reference of the op
    }
    table = {"a": 63.5, "b": 1.0, y: 1.0}
    amax = {"a": 63.5 + 2.1, "b": 1.0, y: 1.0}  # b: amax == th0, skipped
    out = tune(model, acts, table, amax, batch=8)
    assert len(spy) == 1  # only a was tuned (b's grid is empty)
    th0, cands, dists, current, _ = spy[0]
    assert th0 == 63.5 and current == 63.5
    assert cands.tolist() == tune_candidates(63.5, 63.5 + 2.1).tolist()
    np.testing.assert_allclose(cands, 63.5 + 0.1 * np.arange(22), rtol=1e-14)
    # TV-D: distance([1,-2,3], [1,-2,2.5]) = 0.5/6; sample 2: ||[1,0,0,0]-[2,0,0,0]||_2 / 1 = 1; mean of both
    assert dists[0] == pytest.approx((0.5 / 6 + 1.0) / 2, rel=1e-15)
    # every candidate: the same formula on the exact fake quant of BOTH inputs (same c for a and b)
    for c, d in zip(cands, dists):
        o = fq_oracle(acts["a"], c) + fq_oracle(acts["b"], c)
        assert d == pytest.approx(np.mean([dist64(acts[y][j], o[j]) for j in range(2)]), rel=1e-12)
    k = first_argmin(dists)
    assert out == {"a": cands[k], "b": 1.0, y: 1.0}


def test_chosen_threshold_interior_candidate(add_model, spy):
    # one saturating element: out = fq(4, c) = c (127 * c/127), ref 3 -> best candidate c = 3.0 = th0 + 20*0.1
    model, g = add_model
    (y,) = [t for t in g.tensors if t not in ("a", "b")]
    acts = {"a": np.array([[4, 0, 0, 0]], np.float32), "b": np.zeros((1, 4), np.float32),
            y: np.array([[3, 0, 0, 0]], np.float32)}
    out = tune(model, acts, {"a": 1.0, "b": 1.0, y: 1.0}, {"a": 3.1, "b": 1.0, y: 1.0}, batch=8)
    step = (3.1 - 1.0) / 21
    assert out["a"] == 1.0 + step * 20  # 3.0000000000000004: the Python grid value, not 3.0
    _, cands, dists, _, _ = spy[0]
    assert first_argmin(dists) == 20
    np.testing.assert_allclose(dists, np.abs(3.0 - cands) / 3.0, atol=1e-6)  # |ref - c| / |ref|


def test_random_data_matches_oracle_tuner(add_model, spy):
    # both inputs tuned (neither tuned before: each in turn), each with every input fake-quantized with c
    model, g = add_model
    (y,) = [t for t in g.tensors if t not in ("a", "b")]
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = (rng.standard_normal((3, 4)) * 0.3).astype(np.float32)
    a[1, 2] = 6.0  # an outlier in a
    acts = {"a": a, "b": b, y: a + b}
    table = {"a": 1.5, "b": 0.4, y: 1.0}
    amax = {"a": 6.0, "b": float(np.abs(b).max()), y: 1.0}
    out = tune(model, acts, table, amax, batch=8)
    assert len(spy) == 2  # a, then b
    for t, (th0, cands, dists, _, r) in zip(("a", "b"), spy):
        assert th0 == table[t]
        assert cands.tolist() == tune_candidates(table[t], amax[t]).tolist()
        want = [np.mean([dist64(acts[y][j], (fq_oracle(a, c) + fq_oracle(b, c))[j]) for j in range(3)])
                for c in cands]
        np.testing.assert_allclose(dists, want, rtol=1e-12)
        k = first_argmin(want)
        assert r == max(cands[k], table[t]) and out[t] == r
    print(f"\nchosen: a {out['a']:.6f} (th0 1.5, amax 6), b {out['b']:.6f} (th0 0.4, amax {amax['b']:.6f})")


def test_ties_keep_initial_threshold():
    # x all negative: relu(fq(x, c)) = 0 for every c, every distance equal -> k=0 keeps th0
    model, g = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], ["x"], ["y"])
    (y,) = [t for t in g.tensors if t != "x"]
    acts = {"x": -np.ones((2, 4), np.float32), y: np.ones((2, 4), np.float32)}
    out = tune(model, acts, {"x": 1.0, y: 1.0}, {"x": 3.0, y: 1.0}, batch=8)
    assert out["x"] == 1.0


def test_skipped_tensors_unchanged(add_model, spy):
    model, g = add_model
    (y,) = [t for t in g.tensors if t not in ("a", "b")]
    acts = {"a": np.full((1, 4), 4, np.float32), "b": np.zeros((1, 4), np.float32), y: np.ones((1, 4), np.float32)}
    out = tune(model, acts, {"a": 2.0, "b": 3.0, y: 1.0}, {"a": 2.005, "b": 2.0, y: 1.0}, batch=8)
    assert out == {"a": 2.0, "b": 3.0, y: 1.0} and spy == []


@pytest.fixture(scope="module")
def two_relus():
    # x feeds two ops: the second finds x already tuned and tunes it again (inputs[0])
    return _model([helper.make_node("Relu", ["x"], ["y1"], name="r1"), helper.make_node("Relu", ["x"], ["y2"], name="r2")],
                  ["x"], ["y1", "y2"])


@pytest.mark.parametrize("ref1, ref2", [(3.0, 1.5), (1.5, 3.0)])
def test_retune_from_initial_and_upward_only(two_relus, spy, ref1, ref2):
    model, g = two_relus
    y1, y2 = [o.outputs[0] for o in g.ops if o.type == "Relu"]
    acts = {"x": np.array([[4, 0, 0, 0]], np.float32), y1: np.array([[ref1, 0, 0, 0]], np.float32),
            y2: np.array([[ref2, 0, 0, 0]], np.float32)}
    out = tune(model, acts, {"x": 1.0, y1: 1.0, y2: 1.0}, {"x": 3.1, y1: 1.0, y2: 1.0}, batch=8)
    step = (3.1 - 1.0) / 21
    assert len(spy) == 2
    # both evaluations start from the INITIAL threshold 1.0 (TPU-MLIR 1.23), not from the raised one
    assert [c[0] for c in spy] == [1.0, 1.0]
    assert spy[0][1].tolist() == spy[1][1].tolist() == tune_candidates(1.0, 3.1).tolist()
    best = {3.0: 1.0 + step * 20, 1.5: 1.0 + step * 5}
    assert [first_argmin(c[2]) for c in spy] == [20 if r == 3.0 else 5 for r in (ref1, ref2)]
    assert spy[1][3] == best[ref1]  # current = the table after the first op
    assert out["x"] == best[3.0]  # max(first, second): the table never goes down


# ------------------------------------------------------------------------------------------ calibrate() wiring
def test_calibrate_tunes_kl_from_rounded_table_and_abs_max(tmp_path):
    """calibrate(): KL tuned from the %.7f-rounded untuned threshold up to abs_max, on the first tune_num
    samples; MAX and percentile copied untuned (default tune_methods = ["kl"])."""
    model, g = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], ["x"], ["y"], width=512)
    (y,) = [t for t in g.tensors if t != "x"]
    rng = np.random.default_rng(3)
    files = []
    for i in range(4):
        v = (rng.exponential(1.0, (1, 512)) * rng.choice([-1, 1], (1, 512))).astype(np.float32)
        # outliers: 30 and 10 in the two tune samples, 40 (the abs max) in a sample the tuner does not see
        v[0, i] = {0: 30.0, 1: 10.0, 3: 40.0}.get(i, v[0, i])
        p = tmp_path / f"s{i}.npy"
        np.save(p, v)
        files.append(str(p))
    cal = calibrate(model, files, None, methods=("kl", "max", "percentile9999"), hist="v2", tune_num=2,
                    batch=4, progress=False)
    assert cal.tune_num == 2
    for m in ("max", "percentile9999"):
        assert cal.tuned[m] == {t: round_table(v) for t, v in cal.untuned[m].items()}
    th0 = round_table(cal.untuned["kl"]["x"])
    amax = float(cal.stats["x"].abs_max)
    cands = tune_candidates(th0, amax)
    xs = np.concatenate([np.load(f) for f in files[:2]])
    ref = np.maximum(xs, 0)
    assert amax == 40.0 and th0 < 10  # KL well below abs_max: the tuner has a grid
    assert cands.size == 22
    d = [np.mean([dist64(ref[j], np.maximum(fq_oracle(xs[j], c), 0)) for j in range(2)]) for c in cands]
    k = first_argmin(d)
    assert 0 < k < 21  # an interior candidate (k = 15 with this seed)
    want = cands[k]
    assert cal.tuned["kl"]["x"] == want
    assert cal.tuned["kl"][y] == round_table(cal.untuned["kl"][y])  # y feeds no op: never tuned
    print(f"\nkl x: untuned {th0} abs_max {amax:.6f} tuned {want} ({cands.size} candidates)")
