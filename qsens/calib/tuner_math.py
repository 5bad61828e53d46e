"""SimpleTuner maths (TPU-MLIR ``simple_tunner.py``, §2.6): candidate grid, choice, jnp reference copies.

Rounding truth table of the tuner's fake quant (``import_quant_bias``: NumPy ``np.round`` = half to EVEN,
unlike the C++ INT8 path which rounds half away from zero):

    x*127/th :  0.5   1.5   2.5   -2.5   63.5   200    -200
    q        :  0     2     2     -2     64     127    -128

``tune_candidates`` / ``select`` are tiny host functions, and they are what the production tuner
(:func:`qsens.calibrate.tune`) calls.  ``fake_quant``, ``distance`` and ``mean_distance`` are jnp versions
(traceable, vmappable over a stacked threshold axis) that nothing in ``qsens`` calls: production fake-quantizes
with :func:`qsens.calibrate.fake_quant_rows` (bit-identical to :func:`qsens.calibrate.fake_quant_np`) and computes
the distance on the host in float64 (:func:`host_distance`).  The
rounding rule is the same, the scale is not always: ``fake_quant`` divides ``127/th`` in float32, production
(like TPU-MLIR's NumPy) rounds the float64 quotient to float32, which differs by one ulp for about a quarter
of the thresholds, so the two can differ in the last bit of the output.  They are kept for the tests of
``tests/calib/test_calib_tuner.py``; the production path is tested against the spec vectors in
``tests/calib/test_tuner_vectors.py``.
"""

import jax.numpy as jnp
import numpy as np

TUNE_STEPS = 21  #: SimpleTuner ``tune_steps`` (22 grid points)
MIN_TUNED_DIFF = 0.01  #: SimpleTuner ``min_tuned_diff``


def fake_quant(x, th):
    """``clip(RHE(x * (127/th)), -128, 127) / (127/th)`` in ``x``'s dtype (``import_quant_bias``)."""
    x = jnp.asarray(x)
    scale = (127.0 / jnp.asarray(th, jnp.float32)).astype(x.dtype)
    return jnp.clip(jnp.round(x * scale), -128, 127) / scale


def distance(ref, out):
    """``||ref - out||_2 / ||ref||_1`` over all elements of one sample."""
    ref = jnp.ravel(jnp.asarray(ref))
    out = jnp.ravel(jnp.asarray(out))
    return jnp.linalg.norm(ref - out) / jnp.sum(jnp.abs(ref))


def host_distance(ref64: np.ndarray, ref_l1: float, out: np.ndarray) -> float:
    """The production tuner's distance of one sample: ``||ref - out||_2 / ||ref||_1`` on the host in float64.

    ``ref64``: the reference flattened to float64 (once per op); ``ref_l1``: its L1 norm; ``out``: the op's float32
    output (any shape), widened exactly.  The squares are summed by NumPy's own einsum loop, in one fixed order:
    a BLAS dot (``d @ d``) splits the sum over its threads, so its last bits depend on the machine's cores (measured
    with OpenBLAS 0.3.31 on 451,584 elements: 1 thread and 2 threads differ), and a near-tie between two candidates
    could then go either way from one machine to another (``tests/calib/test_calib_tuner.py``)."""
    d = ref64 - out.ravel()  # float64 - float32: the float32 values widened exactly
    return float(np.sqrt(np.einsum("i,i->", d, d)) / ref_l1)


def mean_distance(ref, out):
    """Mean over the leading (sample) axis of :func:`distance` (``calc_distance``)."""
    ref = jnp.asarray(ref)
    out = jnp.asarray(out)
    r = ref.reshape(ref.shape[0], -1)
    o = out.reshape(out.shape[0], -1)
    return jnp.mean(jnp.linalg.norm(r - o, axis=1) / jnp.sum(jnp.abs(r), axis=1))


def tune_candidates(
    th0: float, amax: float, steps: int = TUNE_STEPS, min_diff: float = MIN_TUNED_DIFF
) -> np.ndarray:
    """Grid ``th0 + k*step``, ``k = 0..steps``, ``step = (amax - th0)/steps`` (float64, Python arithmetic).

    Returns an empty array when the tuner skips the tensor (``step <= 0`` or ``|amax - th0| <= min_diff``).
    """
    th0, amax = float(th0), float(amax)
    step = (amax - th0) / steps
    if not (step > 0 and abs(amax - th0) > min_diff):
        return np.zeros(0, np.float64)
    return np.array([th0 + step * k for k in range(steps + 1)], np.float64)


def select(th0: float, candidates, distances, *, current: float | None = None) -> float:
    """Best candidate (k=0 initialises; a later one wins only if strictly smaller), then ``max(current, best)``.

    ``candidates`` empty (skipped tensor) -> best = ``th0``.  ``current`` is the tensor's threshold in the
    table being tuned (it may already have been raised by an earlier evaluated op); default ``th0``.
    """
    cand = np.asarray(candidates, np.float64)
    dist = np.asarray(distances, np.float64)
    if cand.shape != dist.shape:
        raise ValueError(f"candidates {cand.shape} and distances {dist.shape} differ in shape")
    best = float(th0)
    if cand.size:
        best_d = dist[0]
        for c, d in zip(cand[1:], dist[1:]):
            if d < best_d:
                best, best_d = float(c), d
    cur = float(th0) if current is None else float(current)
    return best if best > cur else cur
