"""MAX, percentile9999, MSE (OCTAV), NaN check, zero guard and ``canonicalize`` (TPU-MLIR §2.1, §2.5, §1.2).

All host NumPy (float32 where TPU-MLIR computes in float32):

* percentile: the signed tails are a partial sort (``np.partition``) of each batch, O(size); streaming state is
  only the L smallest and L largest values seen so far (the union of per-sample tails has the same top/bottom L).
* MSE: TPU-MLIR ``threshold_mse`` evaluated per sample exactly as NumPy float32 does it (masked sums,
  <= 20 iterations).  Kept special case: tensors listed as inputs use ``abs_max`` (``absmax_mse`` in
  :func:`qsens.calib.stats.init`).  Dropped (documented simplification): KLD-new's "last five tensors whose
  percentile-of-|a| equals abs_max" rule.
"""

import dataclasses
import math

import numpy as np

from qsens.errors import NumericsError

ZERO_TH = 1e-5  #: TPU-MLIR's all-zero guard and minimum written threshold
METHODS = ("max", "percentile9999", "kl", "mse")  #: method names as written in table headers (KLD-new)


@dataclasses.dataclass(frozen=True, eq=False)
class CalibResult:
    """Per-tensor calibration statistics (TPU-MLIR ``calibration_result``, without ACIQ).

    ``min``/``max``: running signed min/max; ``abs_max = max(|min|, |max|)``; ``kl``/``p99``/``mse``: method
    thresholds; ``p99_min``/``p99_max``: signed percentile values (written as table min/max for percentile);
    ``histogram``/``width``: the accumulated |a| histogram (before KL padding) and its bin width.
    """

    min: float
    max: float
    abs_max: float
    kl: float
    p99: float
    p99_min: float
    p99_max: float
    mse: float
    histogram: np.ndarray
    width: float

    def threshold(self, method: str) -> float:
        """``get_threshold(method)``: max -> abs_max, percentile9999 -> p99, kl -> kl, mse -> mse."""
        return get_threshold(self, method)


def get_threshold(r: CalibResult, method: str) -> float:
    field = {"max": "abs_max", "percentile9999": "p99", "kl": "kl", "mse": "mse"}.get(method.lower())
    if field is None:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    return getattr(r, field)


def canonicalize(r: CalibResult) -> CalibResult:
    """CUT ``canonicalize``: abs_max <= max(|min|,|max|), p99_min >= min, p99_max <= max, p99/mse/kl <= abs_max."""
    abs_max = min(r.abs_max, max(abs(r.min), abs(r.max)))
    return dataclasses.replace(
        r,
        abs_max=abs_max,
        p99_min=max(r.p99_min, r.min),
        p99_max=min(r.p99_max, r.max),
        p99=min(r.p99, abs_max),
        mse=min(r.mse, abs_max),
        kl=min(r.kl, abs_max),
    )


def zero_guard(r: CalibResult) -> CalibResult:
    """All-zero tensor (abs_max <= 1e-5): every threshold 1e-5, min = -1e-5 if min < 0 else 0, max = 1e-5."""
    if not r.abs_max <= ZERO_TH:
        return r
    lo = -ZERO_TH if r.min < 0 else 0.0
    return dataclasses.replace(
        r,
        min=lo,
        max=ZERO_TH,
        abs_max=ZERO_TH,
        kl=ZERO_TH,
        p99=ZERO_TH,
        mse=ZERO_TH,
        p99_min=lo,
        p99_max=ZERO_TH,
    )


def table_threshold(th: float) -> float:
    """Value TPU-MLIR writes to the table: thresholds <= 1e-5 or NaN become 1e-5."""
    return ZERO_TH if (math.isnan(th) or th <= ZERO_TH) else float(th)


def check_finite(name: str, batch: np.ndarray, sample_offset: int = 0) -> None:
    """Raise :class:`NumericsError` naming the tensor and the first sample (``sample_offset + j``) with NaN/Inf."""
    a = np.asarray(batch)
    if np.isfinite(a).all():
        return
    bad = ~np.isfinite(a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1))
    j = int(np.argmax(bad.any(axis=1)))
    kinds = ("NaN" if np.isnan(a).any() else "") + ("Inf" if np.isinf(a).any() else "")
    kinds = "NaN and Inf" if kinds == "NaNInf" else kinds
    raise NumericsError(
        f"{kinds} in activation of tensor '{name}' at calibration sample {sample_offset + j}: "
        "check that input (and its preprocessing) and the model weights are finite"
    )


# ----------------------------------------------------------------------------------------------------- percentile


def percentile_level(op_index: int, n_ops: int) -> float:
    """``per_i = 99.99 + i*(99.999999 - 99.99)/n_ops`` (KLD-new op-index ramp)."""
    return 99.99 + op_index * (99.999999 - 99.99) / n_ops


def percentile_tail_len(n: int, per: float) -> int:
    """``L = int(n*(1 - per/100)) + 1`` with ``n`` = number of samples x elements per sample."""
    return int(n * (1 - per / 100)) + 1


def merge_tails(
    lo: np.ndarray, hi: np.ndarray, values: np.ndarray, length: int, row_min=None, row_max=None
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``length`` smallest (``lo``) and largest (``hi``) of ``lo ∪ hi-candidates ∪ values``, sorted ascending.

    ``lo``/``hi`` are the running tails (sorted); ``values`` new signed float32 values of any shape.  The kept
    values do not depend on the order the values are seen in (equal values are indistinguishable once sorted), so
    a tensor's first batch partially sorts only a head of it (1/8, at least ``2*length + 1`` values: both of its
    tails at once) and treats the rest like any later batch: only values beyond the current tails are looked at.
    Measured on the demo job's calibration: the first batches' full partial sorts were half of the tails' time.

    ``row_min``/``row_max`` (optional): the min and max of each row of ``values`` (B, ...), which the statistics
    have already.  Once both tails are full, a row whose min is not below ``lo[-1]`` holds no value for ``lo``
    (and likewise for ``hi``), so its comparison is skipped: the same values are kept.  A ReLU6 output's tails
    (all 0 and all 6) end every later comparison this way.
    """
    if row_min is not None and lo.size == length and hi.size == length:
        rows = np.asarray(values, np.float32)
        rows = rows.reshape(rows.shape[0], -1)
        v_lo, v_hi = (_beyond(rows, np.asarray(row_min) < lo[-1], np.less, lo[-1]),
                      _beyond(rows, np.asarray(row_max) > hi[0], np.greater, hi[0]))
        return _keep_tails(lo, hi, v_lo, v_hi, length)
    v = np.asarray(values, np.float32).ravel()
    if not (lo.size == length and hi.size == length) and v.size > 2 * length:
        head = max(2 * length + 1, v.size // 8)
        p = np.partition(v[:head], (length - 1, head - length))
        lo, hi = _keep_tails(lo, hi, p[:length], p[head - length :], length)
        v = v[head:]
    if lo.size == length and hi.size == length:  # steady state: only values beyond the current tails matter
        v_lo, v_hi = v[v < lo[-1]], v[v > hi[0]]
    else:
        v_lo = v_hi = v
    return _keep_tails(lo, hi, v_lo, v_hi, length)


def _beyond(rows: np.ndarray, look, cmp, bound) -> np.ndarray:
    """The values of ``rows[look]`` for which ``cmp(value, bound)`` holds, in row order."""
    idx = np.flatnonzero(look)
    if idx.size == 0:
        return rows[:0, 0]
    if idx.size == len(rows):
        return rows[cmp(rows, bound)]
    return np.concatenate([r[cmp(r, bound)] for r in rows[idx]])


def _keep_tails(lo, hi, v_lo, v_hi, length: int) -> tuple[np.ndarray, np.ndarray]:
    def smallest(x):
        if x.size > length:
            x = np.partition(x, length - 1)[:length]
        return np.sort(x)

    return smallest(np.concatenate([lo, v_lo])), -smallest(-np.concatenate([hi, v_hi]))[::-1]


def percentile_from_tails(lo: np.ndarray, hi: np.ndarray, n: int, per: float) -> tuple[float, float, float]:
    """TPU-MLIR percentile from sorted tails of all ``n`` values -> (th, v_min, v_max), float32 arithmetic.

    ``hi`` = top L ascending, ``lo`` = bottom L reversed; ``r = per/100*(n-1)``, ``ratio = r - int(r)``;
    ``v_max = hi[0] + ratio*(hi[1]-hi[0])``, ``v_min = lo[0] + ratio*(lo[1]-lo[0])``; ``th = max(|v_max|, |v_min|)``.
    """
    length = min(percentile_tail_len(n, per), hi.size, lo.size)
    hi_l = np.asarray(hi, np.float32)[hi.size - length :]
    lo_l = np.asarray(lo, np.float32)[:length][::-1]
    r = per / 100 * (n - 1)
    ratio = np.float32(r - int(r))
    if length == 1:
        v_max, v_min = hi_l[0], lo_l[0]
    else:
        v_max = hi_l[0] + ratio * (hi_l[1] - hi_l[0])
        v_min = lo_l[0] + ratio * (lo_l[1] - lo_l[0])
    return float(max(abs(v_max), abs(v_min))), float(v_min), float(v_max)


def percentile_abs_from_tails(lo: np.ndarray, hi: np.ndarray, n: int, per: float) -> float:
    """KLD-mid / v1 percentile (TPU-MLIR 1.23 ``activation_collect_and_calc_th``, the sensitive-layer search's
    per-method tables): the top ``L`` of ``|a|`` over all ``n`` values, ascending, float64;
    ``th = res[0] + ratio*(res[1]-res[0])``.  The ``L`` largest ``|a|`` all lie in the signed tails (the ``L``
    most negative or the ``L`` most positive values), so the streaming state of the v2 form serves both."""
    length = percentile_tail_len(n, per)
    cand = np.concatenate([np.abs(np.asarray(lo, np.float32)), np.abs(np.asarray(hi, np.float32))])
    if n < 2 * length:  # tails overlap: each value once (only tiny tensors)
        cand = np.abs(np.asarray(hi, np.float32))
    res = np.sort(cand.astype(np.float64))[-length:]
    r = per / 100 * (n - 1)
    ratio = r - int(r)
    return float(res[0] + ratio * (res[1] - res[0])) if length != 1 else float(res[0])


def percentile(samples, op_index: int, n_ops: int) -> tuple[float, float, float]:
    """One-shot percentile9999 over a sequence of samples (each one image) -> (th, v_min, v_max)."""
    samples = [np.asarray(s, np.float32) for s in samples]
    n = sum(s.size for s in samples)
    per = percentile_level(op_index, n_ops)
    length = percentile_tail_len(n, per)
    lo = hi = np.zeros(0, np.float32)
    for s in samples:
        lo, hi = merge_tails(lo, hi, s, length)
    return percentile_from_tails(lo, hi, n, per)


# ----------------------------------------------------------------------------------------------------------- MSE


def mse_sample(a, bits: int = 8) -> np.float32:
    """CM ``threshold_mse`` of one sample (OCTAV fixed point), NumPy float32 exactly as TPU-MLIR evaluates it.

    An all-zero sample gives 0.  (TPU-MLIR computes 0/0 = NaN there and stays NaN, which poisons the mean over
    samples and ends as 1e-5 in the table; qsens lets such a sample contribute 0 instead.)
    """
    a = np.asarray(a, np.float32).ravel()
    unsigned = 4 if abs(np.min(a) - 0) < 1e-6 else 1
    x = np.abs(a)
    n_pos = int(np.count_nonzero(x))  # Python ints keep the division in float32 (NEP 50), as .size does
    if n_pos == 0:
        return np.float32(0)
    c = 1 / (4**bits) / 3 / unsigned
    s = x.sum() / n_pos
    for _ in range(20):
        above = x > s
        n_above = int(np.count_nonzero(above))
        s_next = x[above].sum() / (c * (x.size - n_above) + n_above)
        if np.abs(s_next - s) < 1e-6:
            break
        s = s_next
    return np.float32(s)


def mse_batch(batch: np.ndarray, bits: int = 8) -> np.ndarray:
    """:func:`mse_sample` of every sample ``batch[j]`` -> float32 (B,)."""
    return np.array([mse_sample(x, bits) for x in np.asarray(batch)], np.float32)


def histogram_abs_percentile(r: CalibResult, q: float) -> float:
    """The ``q``-th percentile of |x| from a tensor's calibration histogram (upper edge of the bin where the
    cumulative count reaches ``q`` %); the tensor's abs max when there is no histogram."""
    h = np.asarray(r.histogram, np.float64)
    if h.size == 0 or h.sum() <= 0 or not r.width:
        return float(r.abs_max)
    # (1 - 1e-12): 99.9 / 100 * 1000 is 999.0000000000001 in binary floating point
    k = int(np.searchsorted(np.cumsum(h), q / 100.0 * h.sum() * (1 - 1e-12)))
    return float(min((k + 1) * float(r.width), float(r.abs_max)))
