"""Streaming per-tensor calibration statistics (optax-style ``init / update / finalize``, host NumPy; the
histograms' bin counts on the device, :func:`qsens.calib.histogram.histogram_rows`).

One *sample* is one image (one batch element), as TPU-MLIR runs batch-1 samples: a batch of B images is B
samples for the percentile length L, the per-sample MSE and the v2 histogram merge order.

Modes
-----
``v2`` (TPU-MLIR 1.23 ``run_calibration``): one pass.  ``update`` folds running min/max, the v2 histogram
(``combine_histogram`` per sample, in sample order), the signed percentile tails and the per-sample MSE.
Percentile: signed lower/upper tails, written as the table's min/max.

``v1`` (KLD-mid / docs era; TPU-MLIR 1.23 ``run_sensitive_layer``'s per-method tables): two passes over the
same data.  Pass 1 (``update``) collects min/max, percentile tails and MSE; ``begin_histograms(state)`` fixes
every tensor's abs-max; pass 2 (``update`` again) only histograms with the fixed width ``abs_max/2047`` (order
independent).  ``finalize`` checks both passes saw the same number of samples.  Percentile: the top L of |a|,
and the table's min/max are the raw running min/max.

Defaults: :func:`init`'s ``mode`` defaults to ``"v2"``; :func:`qsens.calibrate.calibrate` (and
``collect_statistics``) default to ``hist="v1"``; on the command line ``qsens calibrate --hist`` defaults to
``v2`` and ``qsens search --hist`` (its per-method tables) to ``v1``, while the base table ``qsens search``
calibrates itself is always ``v2``.

State size is independent of the number of samples: per tensor a histogram (2048 bins for v1; v2 grows only
as far as the range grows), ``2L`` floats of percentile tails, and a running MSE sum.
The state is a NamedTuple of plain values; ``update`` returns a new state and never mutates its argument.
"""

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from qsens.calib import histogram as H
from qsens.calib import kl as K
from qsens.calib import methods as M
from qsens.calib.methods import CalibResult

__all__ = ["CalibConfig", "CalibState", "TensorStats", "init", "update", "update_many", "begin_histograms",
           "adopt_v2_histograms", "finalize"]


class CalibConfig(NamedTuple):
    tensor_names: tuple[str, ...]
    n_ops: int  # len(op list) for the percentile ramp
    op_index: Mapping[str, int]  # tensor -> index of its op in the op list
    n_samples: int  # declared number of calibration images (fixes the percentile tail length L)
    mode: str  # "v1" | "v2"
    n_bins: int
    kl_bins: int
    absmax_mse: frozenset[str]  # tensors whose MSE threshold is abs_max (TPU-MLIR: network inputs)
    halve: bool  # halve histograms longer than 131072 bins before KL (KLD-new)
    mse: bool = True  # collect the per-sample MSE (costly: ~half of the statistics time); False => mse = abs_max
    #: TPU-MLIR's last-five rule for MSE: (tensor, is Conv/MatMul) of the last five tensors, last first (see finalize)
    mse_tail: tuple[tuple[str, bool], ...] = ()
    #: keep the percentile tails (the top-L |a|); False when no Percentile9999 is asked for: p99 is then NaN and
    #: only MSE's last-five tensors keep theirs (their rule reads them)
    tails: bool = True


class TensorStats(NamedTuple):
    min: np.float32
    max: np.float32
    n_seen: int  # samples seen in the statistics pass
    n_hist: int  # samples histogrammed
    size: int  # elements per sample (0 before the first sample)
    tail_len: int  # percentile L
    lo: np.ndarray  # L smallest signed values, ascending
    hi: np.ndarray  # L largest signed values, ascending
    mse_sum: float  # sum over samples of the per-sample MSE threshold
    hist: H.HistState


class CalibState(NamedTuple):
    config: CalibConfig
    phase: str  # "single" (v2) | "stats" (v1 pass 1) | "hist" (v1 pass 2)
    tensors: Mapping[str, TensorStats]


_EMPTY = np.zeros(0, np.float32)


def init(
    tensor_names: Sequence[str],
    n_ops_for_percentile: int,
    *,
    n_samples: int,
    op_index: Mapping[str, int] | None = None,
    mode: str = "v2",
    n_bins: int = H.N_BINS,
    kl_bins: int = 128,
    absmax_mse: Collection[str] = (),
    halve: bool = True,
    mse: bool = True,
    mse_tail: Sequence[tuple[str, bool]] = (),
    tails: bool = True,
) -> CalibState:
    """Fresh state for ``tensor_names``.

    ``op_index`` maps each tensor to the position of its op in the op list (default: position in
    ``tensor_names``); ``n_samples`` is the number of calibration images that will be fed (TPU-MLIR's
    ``input_num``; it fixes the percentile L; feeding fewer is allowed, more raises).
    """
    names = tuple(tensor_names)
    if len(set(names)) != len(names):
        raise ValueError("tensor_names contains duplicates")
    if mode not in ("v1", "v2"):
        raise ValueError(f"mode must be 'v1' or 'v2', got {mode!r}")
    if n_samples < 1 or n_ops_for_percentile < 1:
        raise ValueError("n_samples and n_ops_for_percentile must be >= 1")
    idx = dict(op_index) if op_index is not None else {n: k for k, n in enumerate(names)}
    missing = [n for n in names if n not in idx]
    if missing:
        raise ValueError(f"op_index has no entry for tensor(s) {missing[:3]}")
    cfg = CalibConfig(
        names, n_ops_for_percentile, idx, n_samples, mode, n_bins, kl_bins, frozenset(absmax_mse), halve, mse,
        tuple(mse_tail), tails,
    )
    empty = TensorStats(
        np.float32(np.inf), np.float32(-np.inf), 0, 0, 0, 0, _EMPTY, _EMPTY, 0.0, H.empty_state()
    )
    return CalibState(cfg, "single" if mode == "v2" else "stats", {n: empty for n in names})


def _abs_max(t: TensorStats) -> np.float32:
    return np.float32(max(abs(t.min), abs(t.max))) if t.n_seen else np.float32(0)


def _update_stats(cfg: CalibConfig, name: str, t: TensorStats, batch: np.ndarray, hist: bool,
                  memo: dict | None = None) -> TensorStats:
    """``memo`` (:func:`update_many`): the per-sample min/max of ``batch`` and the merged tails, computed once for
    all states fed the same batch (tails keyed by the identity of the state's own tail arrays: two states that
    have seen the same samples hold the same array objects, so they share the result)."""
    memo = {} if memo is None else memo
    flat = batch.reshape(batch.shape[0], -1)
    size = flat.shape[1]
    if t.size and size != t.size:
        raise ValueError(f"tensor '{name}': sample size changed from {t.size} to {size} elements")
    tail_len = t.tail_len or M.percentile_tail_len(
        cfg.n_samples * size, M.percentile_level(cfg.op_index[name], cfg.n_ops)
    )
    mins, maxs = _sample_minmax(memo, flat)
    run_min = np.minimum.accumulate(np.concatenate([[t.min], mins]))[1:]
    run_max = np.maximum.accumulate(np.concatenate([[t.max], maxs]))[1:]
    h = t.hist
    if hist:  # v2: running abs-max including each sample
        running_th = np.maximum(np.abs(run_min), np.abs(run_max)).astype(np.float32)
        h = H.v2_update(h, flat, running_th, cfg.n_bins)
    if cfg.tails or (cfg.mse and any(name == n for n, _ in cfg.mse_tail)):
        key = ("tails", id(t.lo), id(t.hi), tail_len)
        if key not in memo:
            memo[key] = M.merge_tails(t.lo, t.hi, flat, tail_len, mins, maxs)
        lo, hi = memo[key]
    else:
        lo, hi = t.lo, t.hi
    if name in cfg.absmax_mse or not cfg.mse:
        mse_sum = 0.0
    else:
        mse_sum = t.mse_sum + float(np.sum(M.mse_batch(flat).astype(np.float64)))
    return t._replace(
        min=np.float32(run_min[-1]),
        max=np.float32(run_max[-1]),
        n_seen=t.n_seen + flat.shape[0],
        n_hist=t.n_hist + (flat.shape[0] if hist else 0),
        size=size,
        tail_len=tail_len,
        lo=lo,
        hi=hi,
        mse_sum=mse_sum,
        hist=h,
    )


def _sample_minmax(memo: dict, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample min and max of ``flat`` (B, size), computed once per batch for every state fed it."""
    if "minmax" not in memo:
        memo["minmax"] = (flat.min(axis=1), flat.max(axis=1))
    return memo["minmax"]


def update(state: CalibState, batch: Mapping[str, object], sample_offset: int = 0) -> CalibState:
    """Fold one batch ``{tensor: array (B, ...)}`` (B images, ``batch[j]`` is sample ``sample_offset + j``).

    Tensors absent from ``batch`` are left unchanged.  Raises :class:`qsens.errors.NumericsError` on NaN/Inf.
    """
    return update_many([state], batch, sample_offset)[0]


def update_many(states: Sequence[CalibState], batch: Mapping[str, object], sample_offset: int = 0
                ) -> list[CalibState]:
    """:func:`update` of each state with the same batch; equal to updating them one by one, with the work they
    share done once (the NaN/Inf check, per-sample min/max, and the percentile tails of states that have seen the
    same samples: a v1 pass-1 state and a v2 state fed together)."""
    arrays = {}
    for name, arr in batch.items():
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim == 0 or a.shape[0] == 0:
            raise ValueError(f"tensor '{name}': expected a batch array (B, ...), got shape {a.shape}")
        arrays[name] = a
    memos: dict[str, dict] = {name: {} for name in arrays}
    return [_update(st, arrays, sample_offset, memos) for st in states]


def _update(state: CalibState, arrays: Mapping[str, np.ndarray], sample_offset: int, memos: dict) -> CalibState:
    cfg = state.config
    tensors = dict(state.tensors)
    for name, a in arrays.items():
        if name not in tensors:
            raise KeyError(f"tensor '{name}' was not declared in init()")
        memo = memos[name]
        flat = a.reshape(a.shape[0], -1)
        mins, maxs = _sample_minmax(memo, flat)
        if "finite" not in memo:
            # NaN propagates through min and max and +-Inf is an extreme: every per-sample min and max is finite
            # exactly when every value is; the full check (which names the sample) only runs when one is not
            if not (np.isfinite(mins).all() and np.isfinite(maxs).all()):
                M.check_finite(name, a, sample_offset)
            memo["finite"] = True
        t = tensors[name]
        if state.phase == "hist":
            if flat.shape[1] != t.size:
                raise ValueError(
                    f"tensor '{name}': sample size {flat.shape[1]} differs from pass 1 ({t.size})"
                )
            amax = max(np.abs(mins).max(), np.abs(maxs).max())  # = np.abs(flat).max(), exactly
            if amax > t.hist.th:
                raise ValueError(
                    f"tensor '{name}': |a| = {amax} at samples {sample_offset}.. exceeds the pass-1 abs-max "
                    f"{t.hist.th}; v1 pass 2 must see the same data as pass 1"
                )
            h = H.v1_update(t.hist, flat, t.hist.th, cfg.n_bins)
            tensors[name] = t._replace(hist=h, n_hist=t.n_hist + flat.shape[0])
        else:
            t = _update_stats(cfg, name, t, a, hist=state.phase == "single", memo=memo)
            if t.n_seen > cfg.n_samples:
                raise ValueError(
                    f"tensor '{name}': more samples ({t.n_seen}) than declared n_samples={cfg.n_samples}"
                )
            tensors[name] = t
    return state._replace(tensors=tensors)


def begin_histograms(state: CalibState) -> CalibState:
    """v1: end pass 1, fix each tensor's abs-max as its histogram range, start pass 2."""
    if state.phase != "stats":
        raise ValueError(f"begin_histograms() needs a v1 state in pass 1, got phase {state.phase!r}")
    tensors = {
        n: t._replace(
            hist=H.HistState(
                np.zeros(0, np.int64), _abs_max(t), H.bin_width(_abs_max(t), state.config.n_bins)
            )
        )
        for n, t in state.tensors.items()
    }
    return state._replace(phase="hist", tensors=tensors)


def adopt_v2_histograms(v1: CalibState, v2: CalibState) -> tuple[CalibState, frozenset[str]]:
    """v1 pass-2 histograms that a v2 state fed the same samples in pass 1 already holds: ``(v1 state, tensors)``.

    ``v1`` has just begun its histograms (:func:`begin_histograms`), ``v2`` saw the same samples in the same order
    (:func:`qsens.calibrate.collect_statistics_multi` feeds both from one forward).  A tensor's v2 histogram whose
    range never grew (its first non-zero sample holds the abs-max of all of them: every ReLU6 output that reaches 6
    in the first image) binned every sample with ``abs_max / (N - 1)`` into ``N`` bins -- what v1's pass 2 computes
    -- so v1 takes a copy of those counts and the tensor needs no second pass (equal by construction; tested against
    the second pass).  Returns the tensors adopted; the others are histogrammed in pass 2 as before."""
    if v1.phase != "hist" or v2.phase != "single" or v1.config.n_bins != v2.config.n_bins:
        return v1, frozenset()
    n_bins = v1.config.n_bins
    tensors, done = dict(v1.tensors), set()
    for n, t in v1.tensors.items():
        s = v2.tensors.get(n)
        if s is None or t.n_hist or not t.n_seen or s.n_seen != t.n_seen:
            continue
        h = s.hist
        if h.grown or h.hist.size != n_bins or h.th != t.hist.th or h.width != t.hist.width:
            continue
        tensors[n] = t._replace(hist=H.HistState(h.hist.copy(), t.hist.th, t.hist.width), n_hist=t.n_seen)
        done.add(n)
    return v1._replace(tensors=tensors), frozenset(done)


def finalize(state: CalibState) -> dict[str, CalibResult]:
    """Thresholds of every tensor (canonicalized, zero-guarded).  KL of all tensors in one vectorized call."""
    cfg = state.config
    if state.phase == "stats":
        raise ValueError(
            "v1 calibration: call begin_histograms() and feed the samples again before finalize()"
        )
    names = [n for n in cfg.tensor_names if state.tensors[n].n_seen]
    unseen = [n for n in cfg.tensor_names if not state.tensors[n].n_seen]
    if unseen:
        raise ValueError(f"no samples were fed for tensor(s) {unseen[:5]}")
    if state.phase == "hist":
        bad = [n for n in names if state.tensors[n].n_hist != state.tensors[n].n_seen]
        if bad:
            t = state.tensors[bad[0]]
            raise ValueError(f"tensor '{bad[0]}': pass 2 saw {t.n_hist} samples, pass 1 saw {t.n_seen}")
    hists, widths = [], []
    for n in names:
        h = state.tensors[n].hist
        hist = h.hist if h.hist.size else np.zeros(cfg.n_bins, np.int64)
        hp, wp = H.prepare_for_kl(
            hist, h.width, bins=cfg.kl_bins, max_bins=H.KL_MAX_BINS if cfg.halve else None
        )
        hists.append(hp)
        widths.append(wp)
    kls = K.kl_thresholds(hists, widths, bins=cfg.kl_bins)
    # TPU-MLIR 1.23 (kld_calibrator activation_collect_and_calc_th_new, use_mse): walk the last five tensors from the
    # end; while a tensor's percentile of |a| equals its abs-max, its MSE threshold is that value; stop after the
    # first Conv/MatMul (or at the first tensor where they differ).
    mse_tail: dict[str, float] = {}
    if cfg.mse:
        for n, stop in cfg.mse_tail:
            t = state.tensors.get(n)
            if t is None or not t.n_seen:
                break
            pabs = M.percentile_abs_from_tails(t.lo, t.hi, t.n_seen * t.size, M.percentile_level(cfg.op_index[n], cfg.n_ops))
            if pabs != float(_abs_max(t)):
                break
            mse_tail[n] = pabs
            if stop:
                break
    out = {}
    for n, kl in zip(names, kls, strict=True):
        t = state.tensors[n]
        abs_max = float(_abs_max(t))
        per = M.percentile_level(cfg.op_index[n], cfg.n_ops)
        if not cfg.tails:  # no percentile asked for: none computed
            p99 = p_min = p_max = float("nan")
        elif cfg.mode == "v1":  # KLD-mid: top-L of |a|, table min/max = the raw running min/max
            p99, p_min, p_max = M.percentile_abs_from_tails(t.lo, t.hi, t.n_seen * t.size, per), float(t.min), float(t.max)
        else:
            p99, p_min, p_max = M.percentile_from_tails(t.lo, t.hi, t.n_seen * t.size, per)
        mse = abs_max if (n in cfg.absmax_mse or not cfg.mse) else mse_tail.get(n, t.mse_sum / t.n_seen)
        hist = t.hist.hist if t.hist.hist.size else np.zeros(cfg.n_bins, np.int64)
        r = CalibResult(
            min=float(t.min),
            max=float(t.max),
            abs_max=abs_max,
            kl=float(kl),
            p99=p99,
            p99_min=p_min,
            p99_max=p_max,
            mse=float(mse),
            histogram=hist,
            width=float(t.hist.width),
        )
        out[n] = M.zero_guard(M.canonicalize(r))
    return out
