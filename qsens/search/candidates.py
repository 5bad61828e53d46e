"""Candidates: the output thresholds tried for an op, as (label, threshold) pairs from a function.

Today's candidates are the calibration methods' thresholds (run_sensitive_layer: MAX, Percentile9999, KL,
optionally MSE, in that order); a grid or any other generator only has to be a function ``(op) -> list``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from ..calibrate import SL_NAMES, parse_method
from ..errors import SearchError


class Candidate(NamedTuple):
    label: str  # e.g. "KL": the name written in logs and search.json
    threshold: float


CandidateFn = Callable[[object], list[Candidate]]


def method_candidates(methods: Sequence[str], method_thresholds: Mapping[str, Mapping[str, float]]) -> CandidateFn:
    """Each method's (tuned) threshold of the op's output, labelled with TPU-MLIR's method names."""
    methods = [parse_method(m) for m in methods]
    for m in methods:
        if m not in method_thresholds:
            raise SearchError(f"no thresholds for method {m!r}; calibrate with it first")

    def candidates(op) -> list[Candidate]:
        t = op.outputs[0]
        return [Candidate(SL_NAMES[m], float(method_thresholds[m][t])) for m in methods]

    candidates.labels = [SL_NAMES[m] for m in methods]  # type: ignore[attr-defined]
    candidates.fingerprint = {m: [float(method_thresholds[m][t]) for t in sorted(method_thresholds[m])]  # type: ignore[attr-defined]
                              for m in methods}
    return candidates
