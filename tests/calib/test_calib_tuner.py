"""SimpleTuner maths: TV-IQB, TV-R3, TV-D, TV-G, grid skipping and selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsens.calib import tuner_math as T


def test_tv_iqb_and_r3_half_to_even():
    got = T.fake_quant(np.array([0.5, 1.0, -2.0, 0.0199, 0.0197], np.float32), 1.0)
    np.testing.assert_allclose(got, [0.503937, 1.0, -1.007874, 0.023622, 0.023622], rtol=1e-5)
    got = T.fake_quant(np.array([2.5, 3.5, -2.5, 200, -200, 0.5, 1.5], np.float32), 127.0)
    np.testing.assert_array_equal(got, [2, 4, -2, 127, -128, 0, 2])


def test_fake_quant_vmaps_over_thresholds():
    x = jnp.linspace(-3, 3, 50, dtype=jnp.float32)
    ths = jnp.array([0.5, 1.0, 2.5], jnp.float32)
    batched = jax.vmap(T.fake_quant, in_axes=(None, 0))(x, ths)
    for k in range(3):
        np.testing.assert_array_equal(batched[k], T.fake_quant(x, ths[k]))


def test_tv_d_distance():
    np.testing.assert_allclose(T.distance([1, -2, 3.0], [1, -2, 2.5]), 0.5 / 6, rtol=1e-6)
    ref = np.array([[1, -2, 3.0], [2, 0, 0]], np.float32)
    out = np.array([[1, -2, 2.5], [1, 0, 0]], np.float32)
    np.testing.assert_allclose(T.mean_distance(ref, out), (0.5 / 6 + 0.5) / 2, rtol=1e-6)


def test_tv_g_grid():
    c = T.tune_candidates(2.0, 4.1)
    assert c.shape == (22,)
    np.testing.assert_allclose(c, 2.0 + 0.1 * np.arange(22), rtol=1e-12)
    assert c[0] == 2.0


@pytest.mark.parametrize("th0, amax", [(2.0, 2.0), (3.0, 2.0), (2.0, 2.005), (1.0, 1.0099)])
def test_grid_skipped(th0, amax):
    assert T.tune_candidates(th0, amax).size == 0
    assert T.select(th0, [], []) == th0


def test_select_semantics():
    c = T.tune_candidates(1.0, 3.1)
    d = np.full(22, 0.5)
    assert T.select(1.0, c, d) == 1.0  # all equal: k=0 keeps
    d[[4, 9]] = 0.2  # tie: first strictly smaller wins
    assert T.select(1.0, c, d) == pytest.approx(c[4])
    assert T.select(1.0, c, d, current=2.0) == 2.0  # table th only grows
    assert T.select(1.0, c, d, current=1.1) == pytest.approx(c[4])
    with pytest.raises(ValueError, match="differ in shape"):
        T.select(1.0, c, d[:3])


def test_host_distance_does_not_depend_on_blas_threads():
    """The production tuner's float64 distance sums in one fixed order: the same bits with 1 and 2 BLAS threads (a
    BLAS dot splits its sum over threads: with OpenBLAS 0.3.31, 1 and 2 threads differ in the last bits here), and
    the value is ``||ref - out||_2 / ||ref||_1`` (TV-D)."""
    import os
    import subprocess
    import sys

    assert T.host_distance(np.array([1, -2, 3.0]), 6.0, np.array([1, -2, 2.5], np.float32)) == pytest.approx(0.5 / 6)
    code = ("import numpy as np; from qsens.calib.tuner_math import host_distance; rng = np.random.default_rng(0);"
            "r = rng.standard_normal(451584); o = rng.standard_normal(451584).astype(np.float32);"
            "print(repr(host_distance(r, float(np.abs(r).sum()), o)))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "OPENBLAS_NUM_THREADS": str(n), "OMP_NUM_THREADS": str(n)}).stdout
            for n in (1, 2)}
    assert len(outs) == 1, outs
