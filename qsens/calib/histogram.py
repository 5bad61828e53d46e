"""TPU-MLIR activation histograms (the counts on the device, the merge rules on the host).

Bin convention (TPU-MLIR ``cali_math.histogram``), ONE convention used everywhere in qsens:

    t     = |a| with exact zeros removed           (zeros are counted nowhere)
    width = abs_max / (N - 1)                      float32
    k     = floor(t / width + 0.5)                 float32 arithmetic, so .5 ties land where NumPy float32 puts them
    bin k is centred on k*width; values with k > N-1 are dropped
    bin(k) = j with e[j] <= k < e[j+1], e = float32 linspace(0, N-1, N+1): what np.histogram does on float32 k.
             For N = 2048 this is exactly j = k; for other N (v2 grown histograms) a few of the top integers
             fall on a float32-rounded edge and land one bin up (bug-compatible with TPU-MLIR).

Accumulation over samples:

* ``v1`` (KLD-mid / docs era): the final abs-max is known before histogramming, every sample uses the same
  width ``abs_max/(N-1)``; the sum of histograms is order independent (one ``bincount`` per batch).
* ``v2`` (current TPU-MLIR ``combine_histogram``): streaming per sample; the range grows by whole
  ``step = th_old/len(h)`` bins (note ``/len``, not ``/(len-1)``), old bins are added index-wise, and a
  histogram that would exceed 8,000,000 bins is discarded and restarted.

Where it runs: the counts the calibration accumulates (:func:`v1_update`, :func:`v2_update`) are computed on the
device by :func:`histogram_rows`, one jit-compiled bin-index + scatter-add per (batch shape, bin-count bucket),
bit-identical to the NumPy :func:`histogram` (the oracle the tests compare with): the same float32 division (kept
exact, see :func:`_counts`), ``+0.5``, truncation; float32 subnormals aside (a documented decision, same place).
Measured on Lite0 (100 images, the search's v1 + v2 statistics, 2-core CPU under load): the NumPy histograms were
11.5 s of the 16.6 s the statistics thread spent, the device counts 7.4 s.  The v2 merge itself (data-dependent
bin counts, sequential over samples) stays on the host; the bin count of one call is a dynamic argument, its
scatter length a static power-of-two bucket, and the rows a dynamic range of the whole batch (one sample: its own
``(1, size)`` executable), so a growing histogram compiles nothing new.  Counts are int64 on the host (int32 per
call on the device; TPU-MLIR casts to int32 as well).
"""

import functools
import warnings
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ..exe_cache import persistent_jit

N_BINS = 2048  #: TPU-MLIR ``histogram_bin_num`` default
RESET_BINS = 8_000_000  #: v2 histograms that would grow beyond this are discarded and restarted
KL_MAX_BINS = 64 * 2048  #: before KL, histograms longer than this are halved (KLD-new ``find_threshold``)

_HALF = np.float32(0.5)


def bin_width(abs_max, n_bins: int = N_BINS) -> np.float32:
    """``abs_max / (n_bins - 1)`` in float32."""
    return np.float32(abs_max) / np.float32(n_bins - 1)


@functools.lru_cache(maxsize=64)
def _float32_edge_remap(n_bins: int) -> np.ndarray | None:
    """Bin of each integer k in [0, n_bins-1] under np.histogram's float32 edges; None when it is the identity."""
    edges = np.linspace(0, n_bins - 1, n_bins + 1, dtype=np.float32)
    k = np.arange(n_bins, dtype=np.float32)
    remap = np.minimum(np.searchsorted(edges, k, side="right") - 1, n_bins - 1)
    return None if np.array_equal(remap, np.arange(n_bins)) else remap


def histogram(a, abs_max, n_bins: int = N_BINS) -> tuple[np.ndarray, np.float32]:
    """TPU-MLIR ``histogram(a, abs_max, n_bins)``: (int64 counts of length ``n_bins``, float32 width).

    ``a`` may have any shape (it is flattened; several samples may be passed at once since the width is fixed).
    """
    width = bin_width(abs_max, n_bins)
    t = np.abs(np.asarray(a, dtype=np.float32).ravel())
    if t.size == 0 or not width > 0:
        return np.zeros(n_bins, np.int64), width
    # Zeros give k = floor(0.5) = 0; count them there and subtract them again instead of filtering (one pass less).
    k = (t / width + _HALF).astype(np.int64)  # truncation == floor for k >= 0
    h = np.bincount(k, minlength=n_bins)[:n_bins].astype(np.int64, copy=False)  # k > n_bins-1 dropped
    h[0] -= t.size - np.count_nonzero(t)
    remap = _float32_edge_remap(n_bins)
    if remap is not None:
        h = np.bincount(remap, weights=h, minlength=n_bins).astype(np.int64)
    return h, width


_LANES = 4  #: interleaved sub-histograms of the device counter (:func:`_counts`)


@persistent_jit(("qsens.calib.histogram._counts", 2), static_argnames=("length",))
def _counts(flat, lo, hi, width, n_bins, *, length: int):
    """Bin counts of rows ``lo <= r < hi`` of ``flat`` (B, size): ``k = trunc(|a| / width + 0.5)`` in float32,
    zeros and ``k >= n_bins`` dropped (sent to bin ``n_bins``, sliced off by the caller)."""
    t = jnp.abs(flat)
    # XLA rewrites a division by a broadcast scalar into a multiplication by its reciprocal (not IEEE division:
    # 1 ulp off, tests/calib/test_calib_histogram.py); NumPy divides.  ``t * 0 + width`` equals ``width`` for every
    # finite ``t`` (the statistics reject NaN/Inf first) and is no broadcast, so the true division stays, fused in
    # the same loop (an optimization barrier on the broadcast also works but materializes it: 20 % slower)
    w = t * jnp.float32(0) + width
    k = jnp.floor(t / w + jnp.float32(0.5))
    rows = jnp.arange(flat.shape[0])[:, None]
    # zeros are dropped.  Decision: a float32 subnormal counts as zero here (XLA's CPU flushes denormals, even in a
    # bit test once fused) where NumPy puts it in bin 0; qsens's activations come out of XLA ops, which flush
    # denormals, so none reaches a histogram (tests/calib/test_calib_histogram.py checks both facts)
    keep = (t != 0) & (rows >= lo) & (rows < hi)
    k = jnp.where(keep, jnp.minimum(k, n_bins.astype(jnp.float32)), n_bins.astype(jnp.float32))
    # XLA's CPU scatter adds one element after the other, and a run of equal bins (every zero of a ReLU output
    # goes to the dropped bin) is one chain of dependent increments through memory; element e counts into lane
    # e % _LANES of its bin instead (interleaved sub-histograms, summed at the end: the same integers).  Measured on
    # a (10, 112*112*32) ReLU batch: 3.4 -> 2.3 ns per element (signed data 1.8 -> 1.5); 8 lanes were slower.
    k = k.astype(jnp.int32).ravel()
    lane = jnp.arange(k.size, dtype=jnp.int32) % _LANES
    return jnp.bincount(k * _LANES + lane, length=length * _LANES).reshape(length, _LANES).sum(axis=1)


def histogram_rows(flat, lo: int, hi: int, abs_max, n_bins: int = N_BINS) -> tuple[np.ndarray, np.float32]:
    """:func:`histogram` of ``flat[lo:hi]`` (``flat``: (B, size) float32, all finite), counted on the device; the
    same int64 counts and float32 width bit for bit."""
    width = bin_width(abs_max, n_bins)
    if hi <= lo or flat.size == 0 or not width > 0:
        return np.zeros(n_bins, np.int64), width
    if width < np.finfo(np.float32).tiny:  # a subnormal width (abs_max below ~2e-35): XLA's CPU would flush it to
        return histogram(np.asarray(flat)[lo:hi], abs_max, n_bins)  # 0 and drop every value; NumPy bins exactly
    if hi - lo == 1 and flat.shape[0] > 1:  # one sample (a v2 range growth): its own (1, size) executable
        flat, lo, hi = flat[lo : lo + 1], 0, 1
    c = _counts(flat, np.int32(lo), np.int32(hi), np.float32(width), np.int32(n_bins), length=1 << n_bins.bit_length())
    h = np.asarray(c)[:n_bins].astype(np.int64)
    remap = _float32_edge_remap(n_bins)
    if remap is not None:
        h = np.bincount(remap, weights=h, minlength=n_bins).astype(np.int64)
    return h, width


class HistState(NamedTuple):
    """A histogram with the range it covers: bin k is centred on ``k*width``, ``width = th/(len(hist)-1)``."""

    hist: np.ndarray  # int64 counts
    th: np.float32  # abs-max the bins were laid out for
    width: np.float32
    #: v2: the range grew (or the history was reset) after the first non-zero sample laid the bins out.  While it
    #: is False every sample was binned with ``width`` = ``bin_width(th, len(hist))``, exactly as v1 bins them once
    #: ``th`` is the final abs-max (:func:`qsens.calib.stats.adopt_v2_histograms`)
    grown: bool = False


def empty_state() -> HistState:
    return HistState(np.zeros(0, np.int64), np.float32(0), np.float32(0))


def v1_update(state: HistState, samples, abs_max, n_bins: int = N_BINS) -> HistState:
    """v1: add the histogram of ``samples`` (any number of samples at once) at the fixed final ``abs_max``."""
    flat = np.asarray(samples, np.float32)
    flat = flat.reshape(flat.shape[0] if flat.ndim > 1 else 1, -1)
    h, width = histogram_rows(flat, 0, flat.shape[0], abs_max, n_bins)
    if state.hist.size:
        h = state.hist + h
    return HistState(h, np.float32(abs_max), width)


def combine_histogram(state: HistState, a, new_th, n0: int = N_BINS) -> HistState:
    """TPU-MLIR ``combine_histogram`` (CM), one sample ``a`` whose running abs-max (incl. ``a``) is ``new_th``.

    ``state.hist`` empty or ``state.th == 0`` (nothing non-zero seen yet) starts a fresh ``n0``-bin histogram;
    TPU-MLIR would divide by a zero step in the latter case.
    """
    return _combine(state, lambda th, n: histogram(a, th, n), new_th, n0)


def _combine(state: HistState, hist, new_th, n0: int) -> HistState:
    """:func:`combine_histogram` with the sample's histogram as ``hist(abs_max, n_bins)``."""
    new_th = np.float32(new_th)
    old_h, old_th = state.hist, np.float32(state.th)
    if old_h.size == 0 or not old_th > 0:
        h, width = hist(new_th, n0)
        return HistState(h, new_th, width)
    if new_th <= old_th:
        h, _ = hist(old_th, old_h.size)
        return HistState(old_h + h, old_th, state.width, state.grown)
    step = old_th / np.float32(old_h.size)
    add = int((new_th - old_th) // step + 1)
    n_new = old_h.size + add
    if n_new > RESET_BINS:
        warnings.warn(
            f"calibration histogram would need {n_new} bins (> {RESET_BINS}); the samples differ too much in "
            "range, the history is discarded (reorder or replace the calibration images)",
            UserWarning,
            stacklevel=2,
        )
        h, width = hist(new_th, n0)
        return HistState(h, new_th, width, True)
    th = np.float32(add * step + old_th)
    h, width = hist(th, n_new)
    h[: old_h.size] += old_h
    return HistState(h, th, width, True)


def v2_update(state: HistState, batch: np.ndarray, running_th: np.ndarray, n0: int = N_BINS) -> HistState:
    """v2 over a batch: ``batch[j]`` is one sample, ``running_th[j]`` the abs-max of all samples up to and incl. j.

    Equal to calling :func:`combine_histogram` sample by sample; consecutive samples that do not grow the
    range share the width and are binned in one call.
    """
    flat = np.asarray(batch, np.float32)
    flat = flat.reshape(flat.shape[0], -1)
    j, n = 0, len(flat)
    while j < n:
        if state.hist.size and state.th > 0 and running_th[j] <= state.th:
            # running_th is non-decreasing: all samples up to the first that exceeds state.th share the width.
            stop = j + int(np.searchsorted(running_th[j:], state.th, side="right"))
            h, _ = histogram_rows(flat, j, stop, state.th, state.hist.size)
            state = HistState(state.hist + h, state.th, state.width, state.grown)
            j = stop
        else:
            state = _combine(state, lambda th, nb, j=j: histogram_rows(flat, j, j + 1, th, nb), running_th[j], n0)
            j += 1
    return state


def prepare_for_kl(
    hist: np.ndarray, width, *, bins: int = 128, max_bins: int | None = KL_MAX_BINS
) -> tuple[np.ndarray, np.float32]:
    """Zero-pad to a multiple of ``bins``; while longer than ``max_bins`` merge adjacent pairs and double width.

    ``max_bins=None`` skips the halving (KLD-mid).  v1 histograms (2048 bins) are returned unchanged.
    """
    h, w = np.asarray(hist, np.int64), np.float32(width)

    def pad(x):
        return np.pad(x, (0, -x.size % bins))

    h = pad(h)
    while max_bins is not None and h.size > max_bins:
        h = pad(h[::2] + h[1::2])
        w = np.float32(w * np.float32(2))
    return h, w
