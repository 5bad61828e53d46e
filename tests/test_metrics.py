"""TPU-MLIR's rescaled cosine (TV-COS, TV-EXP) on NumPy and JAX (inside jit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsens.metrics import cos_sim, from_true_cos, plain_cosine, similarity, to_true_cos, true_cos

TV_COS = [
    ([1, 0], [0, 1], 0.5),
    ([1, 2, 3], [1, 2, 3], 1.0),
    ([1, 0], [-1, 0], 0.0),
    ([0, 0], [1, 1], 0.5),  # 0/0 -> NaN -> 0 -> 0.5
    ([1, 2], [2, 1], 0.9),
]


@pytest.mark.parametrize("a, b, expect", TV_COS)
def test_tv_cos_numpy(a, b, expect):
    got = cos_sim(np.array(a, np.float32), np.array(b, np.float32))
    assert isinstance(got, np.floating | np.ndarray)
    assert got == pytest.approx(expect, abs=1e-7)


@pytest.mark.parametrize("a, b, expect", TV_COS)
def test_tv_cos_jax_jit(a, b, expect):
    f = jax.jit(cos_sim)
    got = f(jnp.array(a, jnp.float32), jnp.array(b, jnp.float32))
    assert isinstance(got, jax.Array)
    assert float(got) == pytest.approx(expect, abs=1e-6)


def test_integer_inputs_and_no_warning_on_zero():
    with np.errstate(all="raise"):
        assert cos_sim(np.array([0, 0]), np.array([0, 0])) == 0.5


def test_true_cos_and_conversions():
    assert true_cos(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == pytest.approx(0.8)
    # TV-EXP: --expected_cos 0.99 <=> true cosine 0.98; DOC-EN int8 0.978847 <=> 0.957694
    assert to_true_cos(0.99) == pytest.approx(0.98)
    assert to_true_cos(0.978847) == pytest.approx(0.957694)
    assert from_true_cos(0.98) == pytest.approx(0.99)
    assert from_true_cos(to_true_cos(0.123)) == pytest.approx(0.123)


def test_batched_per_sample():
    a = np.array([[1, 0], [1, 2], [0, 0]], np.float32)
    b = np.array([[0, 1], [2, 1], [1, 1]], np.float32)
    np.testing.assert_allclose(cos_sim(a, b, batch_axis=0), [0.5, 0.9, 0.5], atol=1e-7)
    np.testing.assert_allclose(true_cos(a, b, batch_axis=0), [0.0, 0.8, 0.0], atol=1e-7)
    # unbatched = all flattened into one vector
    flat = (1 * 0 + 0 + 2 + 2 + 0) / (np.sqrt(6) * np.sqrt(8))
    assert cos_sim(a, b) == pytest.approx(0.5 + 0.5 * flat, abs=1e-7)
    with pytest.raises(ValueError, match="different shapes"):
        cos_sim(a, b[:2])


def _outputs(rng, n):
    ref = {
        "logits": rng.standard_normal((n, 10)).astype(np.float32),
        "feat": rng.standard_normal((n, 4, 3, 3)).astype(np.float32),
    }
    out = {k: v + 0.5 * rng.standard_normal(v.shape).astype(np.float32) for k, v in ref.items()}
    return ref, out


def test_similarity_matches_hand_computation():
    rng = np.random.default_rng(0)
    ref, out = _outputs(rng, 5)
    sim = similarity(ref, out)
    assert sim.shape == (5,)
    for i in range(5):
        c = [
            0.5
            + 0.5
            * float(
                np.dot(ref[k][i].ravel(), out[k][i].ravel())
                / np.linalg.norm(ref[k][i])
                / np.linalg.norm(out[k][i])
            )
            for k in ref
        ]
        assert sim[i] == pytest.approx(np.mean(c), abs=1e-6)
    w = {"logits": 0.3, "feat": 0.7}
    sw = similarity(ref, out, w)
    expect = 0.3 * cos_sim(ref["logits"], out["logits"], batch_axis=0) + 0.7 * cos_sim(
        ref["feat"], out["feat"], batch_axis=0
    )
    np.testing.assert_allclose(sw, expect, atol=1e-6)
    np.testing.assert_allclose(similarity(ref, out, [0.3, 0.7]), sw, atol=1e-7)
    np.testing.assert_allclose(plain_cosine(ref, out, w), 2 * sw - 1, atol=1e-6)


def test_similarity_pairs_by_name_then_by_order():
    rng = np.random.default_rng(1)
    ref, out = _outputs(rng, 3)
    swapped = {"feat": out["feat"], "logits": out["logits"]}
    np.testing.assert_allclose(similarity(ref, swapped), similarity(ref, out), atol=1e-7)
    renamed = {"o0": out["logits"], "o1": out["feat"]}
    np.testing.assert_allclose(similarity(ref, renamed), similarity(ref, out), atol=1e-7)
    with pytest.raises(ValueError, match="2 outputs, compared model has 1"):
        similarity(ref, {"logits": out["logits"]})


def test_similarity_identical_is_one_and_jit_matches_numpy():
    rng = np.random.default_rng(2)
    ref, out = _outputs(rng, 4)
    np.testing.assert_allclose(similarity(ref, ref), np.ones(4), atol=1e-6)
    jref = {k: jnp.asarray(v) for k, v in ref.items()}
    jout = {k: jnp.asarray(v) for k, v in out.items()}
    f = jax.jit(lambda r, o: similarity(r, o, {"logits": 1.0, "feat": 3.0}))
    got = f(jref, jout)
    assert isinstance(got, jax.Array) and got.shape == (4,)
    np.testing.assert_allclose(np.asarray(got), similarity(ref, out, {"logits": 1.0, "feat": 3.0}), atol=1e-6)


def test_bad_weights():
    rng = np.random.default_rng(3)
    ref, out = _outputs(rng, 2)
    with pytest.raises(ValueError, match="no weight"):
        similarity(ref, out, {"logits": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        similarity(ref, out, [0.0, 0.0])


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    from qsens.metrics import bootstrap_ci

    hits = np.array([1] * 20 + [0] * 5, float)  # 20 of 25 labelled photos right
    m, lo, hi = bootstrap_ci(hits, n_boot=2000, seed=1684)
    assert m == 0.8 and lo < 0.8 < hi
    assert 0.6 <= lo <= 0.68 and 0.92 <= hi <= 0.96  # the binomial sd is 0.08: +-1.96 sd -> [0.64, 0.96]
    assert bootstrap_ci(hits, n_boot=2000, seed=1684) == (m, lo, hi)
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


def test_label_hits_per_sample():
    from qsens.search.job import label_accuracy, label_hits

    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    h1, h5 = label_hits(logits, [1, 2, [0, 2], None])
    assert h1.tolist() == [True, False, True] and h5.tolist() == [True, True, True]
    assert label_accuracy(logits, [1, 2, [0, 2], None]) == {"n": 3, "top1": 2 / 3, "top5": 1.0}
