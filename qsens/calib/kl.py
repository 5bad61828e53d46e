"""TPU-MLIR KL-divergence threshold (``kl_diversity_hist``), all candidates of all tensors at once (NumPy).

For a histogram ``hist`` of N bins (N a multiple of BINS = 128 for int8, 8 for int4), candidate ``m`` keeps
``i = (m+1)*BINS`` bins::

    count = sum(hist);  S = sum(hist[:i]);  e = i / BINS (bins per quantized level)
    P[b] = hist[b] / count            for b < i-1;   P[i-1] = (hist[i-1] + sum(hist[i:])) / count
    Q[b] = hist[b] != 0 ? sum_g / nz_g / S : 0       (g = b // e; sum/nonzero count of group g, nz_g >= 1)
    KL[m] = sum_{b<i} P[b] * (log10(P[b] + 1e-30) - log10(Q[b] + 1e-30))        float32
    m* = first argmin;  threshold = width * (m*+1) * BINS                       (float32, NOT clamped here)

Layout: tensors with the same (padded) bin count are stacked into one (tensors, candidates, bins) computation
(chunked over candidates so that a chunk holds at most ``_CHUNK`` elements); group sums come from prefix sums
gathered at each bin's group start/end.  Every element term is computed as TPU-MLIR does (no algebraic
regrouping), so exact ties (e.g. P == Q everywhere) give exactly 0 and the first candidate wins.
NumPy on host: 62 tensors x 2048 bins is one 2M-element pass (~tens of ms); there is no reason to move
int64 prefix sums to XLA.
"""

from collections.abc import Sequence

import numpy as np

_CHUNK = 1 << 22
_EPS = np.float32(1e-30)


def _kl_block(h: np.ndarray, m0: int, m1: int, bins: int) -> np.ndarray:
    """KL of candidates m0..m1-1 for stacked histograms ``h`` (T, N) int64, N > bins*(m1-1) -> (T, m1-m0).

    P and log10(P) are candidate independent except in the last kept bin; Q is constant per group, so its
    log is taken per group and gathered per bin.  Each element term equals TPU-MLIR's.
    """
    t_, n = h.shape
    f32 = np.float32
    e = np.arange(m0 + 1, m1 + 1)  # (C,) bins per group
    n_c = e.size
    width_b = bins * m1
    i = bins * e  # (C,) kept bins
    cs = np.concatenate([np.zeros((t_, 1), np.int64), np.cumsum(h, axis=1)], axis=1)  # (T, N+1)
    cnz = np.concatenate([np.zeros((t_, 1), np.int64), np.cumsum(h != 0, axis=1)], axis=1)
    count = cs[:, n]  # (T,)
    s = cs[:, i]  # (T,C) kept mass S
    bounds = np.arange(bins + 1)[None, :] * e[:, None]  # (C, bins+1) group boundaries
    sum_g = np.diff(cs[:, bounds], axis=2)  # (T,C,bins)
    nz_g = np.maximum(np.diff(cnz[:, bounds], axis=2), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        q_g = (sum_g.astype(f32) / nz_g.astype(f32)) / s.astype(f32)[:, :, None]
        logq_g = np.log10(q_g + _EPS).reshape(t_, n_c * bins)
        cnt = count.astype(f32)[:, None]
        p = h[:, :width_b].astype(f32) / cnt  # (T,B)
        logp = np.log10(p + _EPS)
        p_last = (h[:, i - 1] + (count[:, None] - s)).astype(f32) / cnt  # (T,C) outliers clipped in
        logp_last = np.log10(p_last + _EPS)
    b = np.arange(width_b)
    gidx = np.minimum(b[None, :] // e[:, None], bins - 1) + bins * np.arange(n_c)[:, None]  # (C,B)
    hb = h[:, None, :width_b]
    log_eps = np.log10(_EPS)
    logq = np.where(hb != 0, logq_g[:, gidx], log_eps)  # (T,C,B)
    term = p[:, None, :] * (logp[:, None, :] - logq)
    inner = (b[None, :] < (i - 1)[:, None])[None]  # bins before the last kept one
    kl = np.where(inner, term, f32(0)).sum(axis=-1, dtype=f32)
    logq_last = np.take_along_axis(logq, (i - 1)[None, :, None].repeat(t_, 0), axis=2)[..., 0]
    with np.errstate(invalid="ignore"):
        return kl + p_last * (logp_last - logq_last)


def kl_divergences(hists: Sequence[np.ndarray], *, bins: int = 128) -> list[np.ndarray]:
    """KL (float32, one value per candidate) of each histogram; lengths must be multiples of ``bins``.

    Histograms with equal length are evaluated together; an empty (all-zero) histogram gives NaN values.
    """
    if bins not in (128, 8):
        raise ValueError(f"KL bins must be 128 (int8) or 8 (int4), got {bins}")
    hs = [np.asarray(x, np.int64).ravel() for x in hists]
    for x in hs:
        if x.size == 0 or x.size % bins:
            raise ValueError(
                f"histogram length {x.size} is not a positive multiple of {bins}; use prepare_for_kl"
            )
    out: list[np.ndarray | None] = [None] * len(hs)
    by_len: dict[int, list[int]] = {}
    for k, x in enumerate(hs):
        by_len.setdefault(x.size, []).append(k)
    for n, idx in by_len.items():
        stack = np.stack([hs[k] for k in idx])
        n_cand = n // bins
        kl = np.empty((len(idx), n_cand), np.float32)
        m0 = 0
        while m0 < n_cand:
            # largest candidate block whose (T, C, B) fits in the chunk budget (at least one candidate)
            m1 = m0 + 1
            while m1 < n_cand and len(idx) * (m1 + 1 - m0) * bins * (m1 + 1) <= _CHUNK:
                m1 += 1
            kl[:, m0:m1] = _kl_candidates(stack, m0, m1, bins)
            m0 = m1
        for row, k in enumerate(idx):
            out[k] = kl[row]
    return out  # type: ignore[return-value]


def _kl_candidates(stack: np.ndarray, m0: int, m1: int, bins: int) -> np.ndarray:
    """Candidates m0..m1-1: bins >= bins*m1 only enter through ``count``, so fold them into one extra column."""
    width_b = bins * m1
    tail = stack[:, width_b:].sum(axis=1, keepdims=True)
    folded = np.concatenate([stack[:, :width_b], tail], axis=1)
    return _kl_block(folded, m0, m1, bins)


def kl_thresholds(hists: Sequence[np.ndarray], widths: Sequence[float], *, bins: int = 128) -> np.ndarray:
    """TPU-MLIR ``kl_diversity_hist`` thresholds (float32, unclamped: clamp to abs-max with ``canonicalize``).

    An all-zero histogram gives threshold 0.
    """
    kls = kl_divergences(hists, bins=bins)
    out = np.empty(len(kls), np.float32)
    for k, (kl, w) in enumerate(zip(kls, widths, strict=True)):
        if np.isnan(kl).all():
            out[k] = 0.0
            continue
        m = int(np.argmin(np.where(np.isnan(kl), np.inf, kl)))  # first minimum == strict '>' scan
        out[k] = np.float32(w) * np.float32((m + 1) * bins)
    return out


def kl_threshold(hist: np.ndarray, width, *, bins: int = 128) -> np.float32:
    """Single-histogram convenience wrapper of :func:`kl_thresholds`."""
    return kl_thresholds([hist], [width], bins=bins)[0]
