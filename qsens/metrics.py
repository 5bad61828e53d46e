"""Similarity metrics of TPU-MLIR's sensitive-layer / mix-precision search.

.. important:: **TPU-MLIR's "cos" is rescaled to [0, 1].**

   ``cos_sim(a, b) = 0.5 + 0.5 * nan_to_num(<a,b> / (|a| |b|))`` (``utils/misc.py``). Every cosine
   threshold of the tools is on this scale: ``--expected_cos 0.99`` means a **true cosine of 0.98**,
   ``--min_layer_cos 0.99`` likewise; ``outputs_cos_los = 1 - outputs_cos = 0.5 * (1 - true cosine)``.
   The DOC-EN "int8 outputs_cos:0.978847" is a true cosine of 0.957694. Convert with
   :func:`to_true_cos` (``2x - 1``) and :func:`from_true_cos` (``0.5 + 0.5c``).

   Zero vectors: ``0/0`` gives NaN, mapped to cosine 0, i.e. ``cos_sim = 0.5``.

Per-sample similarity (``MixQuantModel`` / ``run_model``): for each sample,
``c = sum_o w_o * cos_sim(ref_o, out_o) / sum_o w_o`` over the network outputs ``o`` (weights 1 by
default); ``outputs_cos`` is the mean of ``c`` over samples. Here samples lie along axis 0 of every
output (one sample = one image at deployment batch 1).

All functions work on NumPy arrays (NumPy result) and on JAX arrays, including inside ``jit`` (JAX
result); pass ``xp=`` to force a module.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "bootstrap_ci",
    "cos_sim",
    "from_true_cos",
    "plain_cosine",
    "similarity",
    "to_true_cos",
    "true_cos",
]


def _xp(*arrays: Any, xp=None):
    if xp is not None:
        return xp
    if "jax" in sys.modules:
        import jax

        if any(isinstance(a, jax.Array) for a in arrays):
            import jax.numpy as jnp

            return jnp
    return np


def _as_float(x, xp):
    x = xp.asarray(x)
    if not xp.issubdtype(x.dtype, xp.floating):
        x = x.astype(xp.float32)
    return x


def true_cos(a, b, *, batch_axis: int | None = None, xp=None):
    """Plain cosine ``<a,b>/(|a||b|)`` with NaN (zero vectors) mapped to 0.

    ``batch_axis=None``: both arrays flattened, scalar result. ``batch_axis=0``: one cosine per index of
    axis 0 (the rest flattened), shape ``(N,)``.
    """
    xp = _xp(a, b, xp=xp)
    a = _as_float(a, xp)
    b = _as_float(b, xp)
    if a.shape != b.shape:
        raise ValueError(f"cosine of arrays with different shapes {a.shape} and {b.shape}")
    if batch_axis is None:
        a = a.reshape(-1)
        b = b.reshape(-1)
        num = xp.sum(a * b)
        den = xp.sqrt(xp.sum(a * a)) * xp.sqrt(xp.sum(b * b))
    else:
        a = xp.moveaxis(a, batch_axis, 0)
        b = xp.moveaxis(b, batch_axis, 0)
        n = a.shape[0]
        a = a.reshape(n, -1)
        b = b.reshape(n, -1)
        num = xp.sum(a * b, axis=1)
        den = xp.sqrt(xp.sum(a * a, axis=1)) * xp.sqrt(xp.sum(b * b, axis=1))
    if xp is np:
        with np.errstate(invalid="ignore", divide="ignore"):
            c = num / den
    else:
        c = num / den
    return xp.nan_to_num(c)


def cos_sim(a, b, *, batch_axis: int | None = None, xp=None):
    """TPU-MLIR's rescaled cosine ``0.5 + 0.5 * true_cos(a, b)`` (in [0, 1]; 0/0 -> 0.5).

    TV-COS: ``([1,0],[0,1]) -> 0.5``, ``([1,2,3],[1,2,3]) -> 1``, ``([1,0],[-1,0]) -> 0``,
    ``([0,0],[1,1]) -> 0.5``, ``([1,2],[2,1]) -> 0.9``.
    """
    return 0.5 + 0.5 * true_cos(a, b, batch_axis=batch_axis, xp=xp)


def to_true_cos(x):
    """TPU-MLIR scale -> true cosine: ``2x - 1`` (``--expected_cos 0.99`` -> 0.98)."""
    return 2 * x - 1


def from_true_cos(c):
    """True cosine -> TPU-MLIR scale: ``0.5 + 0.5c``."""
    return 0.5 + 0.5 * c


def _pairs(ref_outputs: Mapping[str, Any], outputs: Mapping[str, Any]):
    if len(ref_outputs) != len(outputs):
        raise ValueError(f"reference has {len(ref_outputs)} outputs, compared model has {len(outputs)}")
    if len(ref_outputs) == 0:
        raise ValueError("no outputs to compare")
    if set(ref_outputs) == set(outputs):
        return [(k, ref_outputs[k], outputs[k]) for k in ref_outputs]
    # like TPU-MLIR: different names are matched by order
    return [(k, r, o) for (k, r), o in zip(ref_outputs.items(), outputs.values())]


def _weights(names: Sequence[str], weights) -> list[float]:
    if weights is None:
        return [1.0] * len(names)
    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(f"no weight for outputs {missing}")
        w = [float(weights[n]) for n in names]
    else:
        w = [float(x) for x in weights]
        if len(w) != len(names):
            raise ValueError(f"{len(w)} weights for {len(names)} outputs")
    if sum(w) <= 0 or any(x < 0 for x in w):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w}")
    return w


def plain_cosine(ref_outputs: Mapping[str, Any], outputs: Mapping[str, Any], weights=None, *, xp=None):
    """Per-sample weighted mean over outputs of the TRUE cosine, shape ``(N,)`` (samples on axis 0)."""
    pairs = _pairs(ref_outputs, outputs)
    w = _weights([k for k, _, _ in pairs], weights)
    xp = _xp(*(r for _, r, _ in pairs), *(o for _, _, o in pairs), xp=xp)
    total = None
    for wi, (_, r, o) in zip(w, pairs):
        c = wi * true_cos(r, o, batch_axis=0, xp=xp)
        total = c if total is None else total + c
    return total / sum(w)


def similarity(ref_outputs: Mapping[str, Any], outputs: Mapping[str, Any], weights=None, *, xp=None):
    """Per-sample TPU-MLIR similarity ``sum_o w_o cos_sim(ref_o, out_o) / sum_o w_o``, shape ``(N,)``.

    ``outputs_cos`` of TPU-MLIR is ``similarity(...).mean()``; the loss is ``1 - outputs_cos``.
    Outputs are paired by name when both dicts have the same names, else by order (TPU-MLIR).
    ``weights``: None (all 1), a mapping name -> weight, or a sequence in ``ref_outputs`` order.
    """
    return from_true_cos(plain_cosine(ref_outputs, outputs, weights, xp=xp))


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-sample ``values`` (e.g. 0/1 top-1 correctness) and its percentile bootstrap interval.

    ``n_boot`` resamples with replacement from ``numpy.random.default_rng(seed)``; the interval is the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles of the resampled means (NumPy's default linear quantile), so
    the same values and seed always give the same interval.  Returns ``(mean, low, high)``.  With 27 labelled
    images a 95 % interval on top-1 is about +-0.17: report it, never the bare mean, as a model's accuracy.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)
