"""Independent NumPy port of TPU-MLIR's calibration maths, used as the test oracle.

Written directly from the spec (/work/shared/reference/tpu-mlir-semantics.md §2) in TPU-MLIR's own loop
style; imports nothing from ``qsens.calib``.  Deliberately slow and literal: ``np.histogram`` (not bincount),
one Python loop per KL candidate and per group, a full sort for percentiles.
"""

import warnings

import numpy as np

F32 = np.float32


def histogram(ndarray, abs_max, bin_num=2048):
    """CM ``histogram``."""
    t = np.abs(np.asarray(ndarray, F32).flatten())
    t = t[t != 0]
    width = F32(abs_max) / F32(bin_num - 1)
    if t.size > 0:
        hist, _ = np.histogram(
            np.floor(t / width + F32(0.5)), bins=bin_num, range=(0, bin_num - 1), density=False
        )
    else:
        hist = np.zeros(bin_num)
    return hist.astype(np.int64), width


def combine_histogram(old, arr, new_th, bin_num=2048):
    """CM ``combine_histogram``; ``old = (hist, width, th)``."""
    old_hist, old_width, old_th = old
    new_th = F32(new_th)
    if new_th <= old_th:
        hist, _ = histogram(arr, old_th, len(old_hist))
        return old_hist + hist, old_width, old_th
    old_num_bins = len(old_hist)
    old_step = F32(old_th) / F32(old_num_bins)
    half_increased_bins = int((new_th - old_th) // old_step + 1)
    new_num_bins = half_increased_bins + old_num_bins
    if new_num_bins > 8000000:
        warnings.warn("reset", UserWarning, stacklevel=2)
        hist, width = histogram(arr, new_th, bin_num)
        return hist, width, new_th
    new_th = F32(half_increased_bins * old_step + old_th)
    hist, width = histogram(arr, new_th, new_num_bins)
    hist[0 : new_num_bins - half_increased_bins] += old_hist
    return hist, width, new_th


def stream_v2(samples, bin_num=2048):
    """KLD-new per-sample loop: first sample ``histogram(a, absmax_so_far)``, then ``combine_histogram``."""
    state = None
    run_min, run_max = np.inf, -np.inf
    for a in samples:
        a = np.asarray(a, F32)
        run_min = min(run_min, F32(a.min()))
        run_max = max(run_max, F32(a.max()))
        th = F32(max(abs(run_min), abs(run_max)))
        if state is None:
            h, w = histogram(a, th, bin_num)
            state = (h, w, th)
        else:
            state = combine_histogram(state, a, th, bin_num)
    return state


def pad_and_halve(hist, width, bins=128, max_bins=64 * 2048):
    h = np.asarray(hist, np.int64)
    h = np.concatenate([h, np.zeros((bins - len(h) % bins) % bins, np.int64)])
    w = F32(width)
    while len(h) > max_bins:
        h = np.array([h[2 * j] + h[2 * j + 1] for j in range(len(h) // 2)], np.int64)
        h = np.concatenate([h, np.zeros((bins - len(h) % bins) % bins, np.int64)])
        w = F32(w * 2)
    return h, w


def kl_curve(hist, bins=128):
    """KLC ``kl_diversity_hist`` divergences, one candidate at a time (float32)."""
    hist = np.asarray(hist, np.int64)
    n = len(hist)
    count = hist.sum()
    out = []
    for m in range(n // bins):
        i = (m + 1) * bins
        p = hist[:i].astype(F32)
        p[i - 1] += F32(hist[i:].sum())
        p /= F32(count)
        s = hist[:i].sum()
        e = i // bins
        q = np.zeros(i, F32)
        for g in range(bins):
            seg = hist[g * e : (g + 1) * e]
            nz = max(int(np.count_nonzero(seg)), 1)
            with np.errstate(divide="ignore", invalid="ignore"):  # S == 0: no kept mass
                val = F32(seg.sum()) / F32(nz) / F32(s)
            q[g * e : (g + 1) * e] = np.where(seg != 0, val, F32(0))
        eps = F32(1e-30)
        out.append(np.sum(p * (np.log10(p + eps) - np.log10(q + eps)), dtype=F32))
    return np.array(out, F32)


def kl_threshold(hist, width, bins=128):
    kl = kl_curve(hist, bins)
    best, idx = kl[0], 0
    for m in range(1, len(kl)):
        if best > kl[m]:  # strict '>' scan: first minimum wins
            best, idx = kl[m], m
    return F32(width) * F32((idx + 1) * bins), idx


def percentile(samples, op_index, n_ops):
    """KLD-new signed percentile: per-sample tails of length L, union, sort, interpolate."""
    per = 99.99 + op_index * (99.999999 - 99.99) / n_ops
    n = sum(np.asarray(s).size for s in samples)
    length = int(n * (1 - per / 100)) + 1
    tails = []
    for s in samples:
        srt = np.sort(np.asarray(s, F32).ravel())
        k = min(length, srt.size)
        tails.append(srt[:k])
        tails.append(srt[srt.size - k :])
    allv = np.sort(np.concatenate(tails))
    hi = allv[-length:]
    lo = allv[:length][::-1]
    r = per / 100 * (n - 1)
    ratio = r - int(r)
    if length == 1:
        v_max, v_min = hi[0], lo[0]
    else:
        v_max = hi[0] + F32(ratio) * (hi[1] - hi[0])
        v_min = lo[0] + F32(ratio) * (lo[1] - lo[0])
    return max(abs(v_max), abs(v_min)), v_min, v_max


def threshold_mse(array, bit=8):
    """CM ``threshold_mse``."""
    array = np.asarray(array, F32)
    unsigned = 4 if np.abs(np.min(array) - 0) < 1e-6 else 1
    abs_x = np.abs(array.flatten())
    with np.errstate(divide="ignore", invalid="ignore"):
        s_n = abs_x.sum() / abs_x[abs_x > 0].size
        for _ in range(20):
            s_n_plus_1 = abs_x[abs_x > s_n].sum() / (
                1 / (4**bit) / 3 / unsigned * abs_x[abs_x <= s_n].size + abs_x[abs_x > s_n].size
            )
            if np.abs(s_n_plus_1 - s_n) < 1e-6:
                break
            s_n = s_n_plus_1
    return s_n
