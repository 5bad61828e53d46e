"""Selectors: from per-op results to choices, exactly as TPU-MLIR's SensitiveLayer makes them (spec §4.2-4.4).

- :func:`best_method`: the best candidate of an op (strict ``<``: on a tie the first wins).
- :class:`TopN` / :func:`analysis_sensitive_layers`: the float layers (top-N losses, the Conv/Scale partner
  rule, TPU-MLIR's rank printing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..onnx.ir import Graph


class Sensitivity(NamedTuple):
    name: str
    loss: float
    type: str  # Top type, e.g. "Conv"


def best_method(losses: Sequence[float]) -> int:
    """Index of the best candidate: strict ``<`` over the methods in order, so on a tie the first wins."""
    best, best_loss = 0, float("inf")
    for k, loss in enumerate(losses):
        if loss < best_loss:
            best, best_loss = k, loss
    return best


def analysis_sensitive_layers(sens: Sequence[Sensitivity], max_float_layers: int, graph: Graph | None = None,
                              successors=None, predecessors=None) -> tuple[list[str], list[str]]:
    """``analysis_sensitive_layers``: the top losses, Conv/Scale partners added, ranks as TPU-MLIR prints them.

    Returns ``(float_layers, log_lines)``.  The result can exceed ``max_float_layers`` by the partners; the
    rank is not incremented when an op already in the list is met again (both TPU-MLIR quirks, TV-AN).
    """
    if graph is not None:
        def successors(n):
            return [c.name for t in graph.op(n).outputs for c in graph.consumers(t)]

        def predecessors(n):
            return [graph.producer(t).name for t in graph.op(n).inputs]
    types = {s.name: s.type for s in sens}
    ordered = sorted(sens, key=lambda s: -s.loss)
    out: list[str] = []
    lines: list[str] = []
    rank = 0
    for s in ordered:
        lines.append(f"the layer {s.name} is {rank} sensitive layer, loss is {s.loss}, type is top.{s.type}")
        if max_float_layers > 0 and max_float_layers > len(out):
            if s.name in out:
                continue
            out.append(s.name)
            if s.type == "Conv":
                for n in successors(s.name) if successors else []:
                    if types.get(n) == "Scale":
                        out.append(n)
            elif s.type == "Scale":
                for n in predecessors(s.name) if predecessors else []:
                    if types.get(n) == "Conv":
                        out.append(n)
        rank += 1
    return out, lines


class TopN:
    """TPU-MLIR's top-N selection with the Conv/Scale partner rule (``--max_float_layers N``)."""

    def __init__(self, n: int):
        self.n = int(n)

    def select(self, sens: Sequence[Sensitivity], graph: Graph | None = None) -> tuple[list[str], list[str]]:
        return analysis_sensitive_layers(sens, self.n, graph)
