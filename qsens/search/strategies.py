"""Strategies: what to evaluate next, with an explicit state that is the checkpoint.

Modelled on optax's ``init``/``update``: ``state = strategy.init(problem)``, then
``state, carry, events = strategy.update(problem, state, evaluator, carry)`` until ``strategy.done(state)``.
The state is JSON data (``json.dumps(state)`` is the checkpoint; a resumed search rebuilds the evaluator's
carry with ``evaluator.init(problem, start=state["next"])`` and continues byte-identically).  Events are the
log messages TPU-MLIR prints for the step; the job writes them.  Strategies do no I/O.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from .candidates import CandidateFn
from .evaluators import Config, Prefix
from .problem import Problem
from .selectors import best_method


@dataclasses.dataclass
class CandidateLoss:
    op: str
    method: str
    threshold: float
    loss: float
    same_as: str | None = None  # method whose (effective) threshold is identical: loss copied, not recomputed


@dataclasses.dataclass
class OpResult:
    op: str
    type: str
    candidates: list[CandidateLoss]
    best_method: str
    best_threshold: float
    best_loss: float
    seconds: float

    @classmethod
    def from_json(cls, d: dict) -> OpResult:
        d = dict(d)
        return cls(candidates=[CandidateLoss(**c) for c in d.pop("candidates")], **d)


def distinct(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Distinct values in first-seen order and, for each input, the index of its distinct value."""
    uniq: list[float] = []
    where: list[int] = []
    for v in values:
        for k, u in enumerate(uniq):
            if u == v:
                where.append(k)
                break
        else:
            uniq.append(v)
            where.append(len(uniq) - 1)
    return uniq, where


def choose(op_name: str, op_type: str, methods: Sequence[str], ths: Sequence[float], losses: Sequence[float],
           same_as: Sequence[str | None], seconds: float) -> OpResult:
    """The op's result: every candidate's loss and the best one (:func:`~qsens.search.selectors.best_method`)."""
    k = best_method(losses)
    cands = [CandidateLoss(op_name, m, float(t), float(l), s) for m, t, l, s in zip(methods, ths, losses, same_as)]
    return OpResult(op_name, op_type, cands, methods[k], float(ths[k]), float(losses[k]), seconds)


class SensitiveLayer:
    """TPU-MLIR's ``run_sensitive_layer`` (spec §4.2): op by op in graph order, only that op INT8, every
    candidate output threshold scored, the best one kept in the evolving table for the ops that follow.

    Candidates whose *effective* threshold (after the copy map) equals an earlier candidate's share its loss
    (``same_as``), so they are evaluated once.  State: ``{"next": i, "th": [...], "ops": [OpResult...]}``."""

    name = "sensitive_layer"

    def __init__(self, candidates: CandidateFn):
        self.candidates = candidates

    def init(self, problem: Problem) -> dict:
        return {"next": 0, "th": [float(v) for v in problem.th0], "ops": []}

    def done(self, problem: Problem, state: dict) -> bool:
        return state["next"] >= len(problem.ops)

    def update(self, problem: Problem, state: dict, evaluator, carry: Prefix) -> tuple[dict, Prefix, list[str]]:
        i = state["next"]
        assert carry.next == i, (carry.next, i)
        plan, idx = problem.plan, problem.plan.tensor_index
        op = problem.ops[i]
        th = np.asarray(state["th"], np.float32)
        t0 = time.perf_counter()
        out_t = op.outputs[0]
        cands = self.candidates(op)
        labels = [c.label for c in cands]
        ths = [c.threshold for c in cands]
        events = [f"start to handle layer: {op.name}, type: top.{op.type}"]
        effs = [float(plan.effective(problem.with_output(th, out_t, c))[idx[out_t]]) for c in ths]
        uniq, where = distinct(effs)
        reps = [ths[where.index(k)] for k in range(len(uniq))]
        configs = [Config(frozenset({op.name}), problem.with_output(th, out_t, c)) for c in reps]
        ul = evaluator.losses(problem, configs, carry)
        losses = [ul[w] for w in where]
        same_as = [None if where.index(w) == k else labels[where.index(w)] for k, w in enumerate(where)]
        for m, c, l in zip(labels, ths, losses):
            events.append(f"adjust layer {op.name} th, with method {m}, and threshlod {c}")
            events.append(f"outputs_cos_los = {l}")
        r = choose(op.name, op.type, labels, ths, losses, same_as, time.perf_counter() - t0)
        th[idx[out_t]] = np.float32(r.best_threshold)
        events.append(f"layer {op.name}, layer type is top.{op.type}, best_th = {r.best_threshold}, "
                      f"best_method = {r.best_method}, best_cos_loss = {r.best_loss}")
        state = {"next": i + 1, "th": [float(v) for v in th], "ops": state["ops"] + [dataclasses.asdict(r)]}
        return state, evaluator.advance(problem, carry), events

    @staticmethod
    def results(state: dict) -> list[OpResult]:
        return [OpResult.from_json(o) for o in state["ops"]]
