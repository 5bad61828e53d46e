"""Search variants no tool ships: strategies of the search engine, each with a JSON state (the checkpoint).

Every variant scores *exact* configurations of the BM1684 mixed model (INT8 kernels, thresholds after the copy
map) on the problem's inference images; what differs is which configurations it asks for and how it selects.
Names (``qsens search --variant NAME``):

- ``auto_n``: greedy forward selection.  Start from the all-INT8 model; each step scores every remaining op
  as the next float layer jointly with those already chosen, in one walk of the mixed model (one
  :class:`~qsens.search.evaluators.MixedPrefix` pass: the shared prefix runs once, each candidate runs from its
  op on), adds the best and stops above ``expected_cos`` or at ``max_float_layers``.
- ``auto_n_ordered``: the cheap form: rank by leave-one-in loss (only that op INT8, the table's threshold), then
  add ops in that order with one exact check per step until ``expected_cos`` (or ``max_float_layers``).
- ``neighbour``: units = single ops and producer->consumer chains of up to ``unit_len`` INT8-capable ops; a
  unit's loss has its ops INT8 and the rest float; ``interaction = loss(unit) - sum(loss(op))``; units are taken
  by loss, their ops set float, until ``max_float_layers``.

Every final state has ``float_layers`` and ``order`` (the selection order: ``float_layers`` is a prefix of it,
except for ``cost_aware`` whose choice is the best point within its budget).
- ``leave_one_out``: everything INT8 except one op; ranked by the gain ``loss(all INT8) - loss(op float)``;
  the top ``max_float_layers`` are float.
- ``grad_screen``: one forward + backward pass of a straight-through all-INT8 model ranks every op by a
  first-order estimate of the leave-one-out gain (:mod:`qsens.search.gradient`); only the top ``top_k`` are
  then scored exactly (leave-one-out) and the best ``max_float_layers`` of them are float.
- ``threshold_grid``: op by op in graph order, ``grid_size`` output thresholds between the tensor's 99.9th
  percentile of |x| and its max (plus the current one) are scored in the all-INT8 model with the thresholds
  chosen so far; the best is kept (strict ``<``: the current threshold wins ties).  Then float layers are added
  in leave-one-out order with an exact check per step (as ``auto_n_ordered``) until ``expected_cos``.
- ``threshold_optax``: the same, with the table refined by Adam on log-thresholds through a straight-through
  all-INT8 model (:func:`qsens.search.gradient.refine_thresholds`; every step's loss is the exact one, the best
  table is kept).
- ``cost_aware``: leave-one-out gains, per-op MACs and activation bytes; ops are added by gain per float MAC,
  each prefix set scored exactly: the Pareto front of similarity vs float MACs; the selection is the best
  similarity within ``float_budget_macs`` (a fraction of the model's MACs when <= 1).

Strategies do no I/O; :mod:`qsens.search.varjob` runs them with checkpoints, logs and files.  A strategy's
``update`` does one unit of work (a walk of the mixed model, an exact check, a gradient pass) so a killed job
resumes from the last finished unit and reaches the same results (the evaluation is deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import SearchError
from . import VARIANTS
from .evaluators import Config, MixedPrefix, WholeGraph
from .problem import Problem

#: grad_screen's scores (qsens.search.gradient.grad_scores): first-order ``sum g*dy`` and its Fisher form; the
#: ``_requant`` forms take ``dy = y_int8 - Q(y_float)`` for an op whose readers all re-quantize its output
GRAD_SCORES = ("taylor", "fisher", "taylor_requant", "fisher_requant")


# --------------------------------------------------------------------------------------------- helpers
def int8_capable(problem: Problem) -> list[str]:
    """Ops whose precision matters: every op but the Input and the ops BM1684 keeps F32 (graph order)."""
    return [op.name for op in problem.ops if op.type != "Input" and op.name not in problem.plan.f32_reason]


def all_ops(problem: Problem) -> frozenset:
    return frozenset(op.name for op in problem.ops)


def _pos(problem: Problem) -> dict[str, int]:
    return {op.name: i for i, op in enumerate(problem.ops)}


def _th(state: dict) -> np.ndarray:
    return np.asarray(state["th"], np.float32)


def op_costs(problem: Problem) -> dict[str, dict]:
    """Per op and per image: multiply-accumulates and the output activation bytes in float (4 B/element) and
    INT8 (1 B).  MACs: Conv/Deconv ``out_elements x prod(filter.shape[1:])``, MatMul/Gemm with a weight
    ``out_elements x K``; other ops 0 (elementwise work is not counted)."""
    g = problem.graph
    out = {}
    for op in problem.ops:
        shape = g.tensor_shape(op.outputs[0])
        elems = int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape))
        w = dict(problem.host_weights(op)) if op.weights else {}
        macs = 0
        if "filter" in w and op.type in ("Conv", "Deconv", "ConvTranspose"):
            macs = elems * int(np.prod(np.shape(w["filter"])[1:]))
        elif op.type in ("MatMul", "Gemm") and op.inputs:
            in_shape = g.tensor_shape(op.inputs[0])
            macs = elems * int(in_shape[-1])
        out[op.name] = {"macs": int(macs), "bytes_f32": 4 * elems, "bytes_int8": elems}
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists (ties handled), in pure numpy."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    conc = float(np.sum(da * db))
    ta, tb = float(np.sum(da != 0)), float(np.sum(db != 0))
    return conc / np.sqrt(ta * tb) if ta and tb else float("nan")


class Walker:
    """Evaluates configurations for the strategies and keeps the evaluator's carry between updates.

    ``walk(base, tasks)``: ``tasks`` maps an op index to configurations that agree with ``base`` before it;
    the base's mixed prefix is advanced once through all of them (one :class:`MixedPrefix` pass) and the losses
    come back per index.  The carry is kept when the next walk continues on a compatible base (the threshold
    searches), so nothing is recomputed; after a resume it is rebuilt from the network input.  ``whole``
    runs configurations from the network input (:class:`WholeGraph`)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.ev: MixedPrefix | None = None
        self.carry = None
        self.counts = {"walks": 0, "suffix_runs": 0, "whole_runs": 0, "fallbacks": 0}

    def walk(self, base: Config, tasks: Mapping[int, Sequence[Config]]) -> dict[int, list[float]]:
        p = self.problem
        order = sorted(tasks)
        if not order:
            return {}
        start = order[0]
        if self.ev is None or self.carry is None or self.carry.next > start or \
                not self.ev.rebase(p, base, self.carry):
            self.ev = MixedPrefix(p, base)
            self.carry = self.ev.init(p, 0)
        s0, f0 = self.ev.suffix_runs, self.ev.fallbacks
        out = {}
        for i in order:
            while self.carry.next < i:
                self.carry = self.ev.advance(p, self.carry)
            out[i] = self.ev.losses(p, list(tasks[i]), self.carry)
        self.counts["walks"] += 1
        self.counts["suffix_runs"] += self.ev.suffix_runs - s0
        self.counts["fallbacks"] += self.ev.fallbacks - f0
        return out

    def forget(self) -> None:
        self.ev, self.carry = None, None

    def whole(self, configs: Sequence[Config]) -> list[float]:
        self.counts["whole_runs"] += len(configs)
        return WholeGraph().losses(self.problem, configs)


def _record(state: dict, phase: str, what: dict, loss: float) -> None:
    state["evals"].append({"phase": phase, **what, "loss": float(loss)})


def _base_state(variant: str, th: np.ndarray) -> dict:
    return {"variant": variant, "th": [float(v) for v in th], "evals": [], "done": False, "phase": "start",
            "float_layers": [], "units": 0}


def _similarity(loss: float) -> float:
    return 1.0 - float(loss)


# --------------------------------------------------------------------------------------------- phases
def leave_one_out_walk(problem: Problem, walker: Walker, state: dict, phase: str, fp: Sequence[str] = (),
                       ops: Sequence[str] | None = None) -> dict[str, float]:
    """Losses of ``all INT8 - fp - {op}`` for each op of ``ops`` (default: every INT8-capable op not in ``fp``),
    one walk on the ``all INT8 - fp`` prefix; recorded in ``state['evals']``."""
    pos = _pos(problem)
    th = _th(state)
    base_int8 = all_ops(problem) - set(fp)
    ops = [o for o in (ops if ops is not None else int8_capable(problem)) if o not in fp]
    tasks = {pos[o]: [Config(base_int8 - {o}, th)] for o in ops}
    res = walker.walk(Config(base_int8, th), tasks)
    losses = {o: res[pos[o]][0] for o in ops}
    for o in ops:
        _record(state, phase, {"float": list(fp) + [o]}, losses[o])
    return losses


def leave_one_in_walk(problem: Problem, walker: Walker, state: dict, phase: str) -> dict[str, float]:
    """Losses with only ``op`` INT8 (the table's thresholds) for every INT8-capable op: one walk."""
    pos = _pos(problem)
    th = _th(state)
    ops = int8_capable(problem)
    res = walker.walk(Config(frozenset(), th), {pos[o]: [Config(frozenset({o}), th)] for o in ops})
    losses = {o: res[pos[o]][0] for o in ops}
    for o in ops:
        _record(state, phase, {"int8": [o]}, losses[o])
    return losses


def rank(scores: Mapping[str, float], problem: Problem, descending: bool = True) -> list[str]:
    """Ops by score (descending by default); ties keep graph order."""
    pos = _pos(problem)
    return sorted(scores, key=lambda o: ((-scores[o]) if descending else scores[o], pos[o]))


class _Ordered:
    """Shared phase: add ops in a given order, one exact whole-model check per step, until the similarity
    exceeds ``expected_cos`` or ``max_float_layers`` are float.  State keys: ``order``, ``k``, ``curve``."""

    def ordered_step(self, problem: Problem, walker: Walker, state: dict) -> list[str]:
        if self.max_float_layers == 0 or not state["order"]:
            state.update(float_layers=[], done=True)
            return ["no float layer to add"]
        k = state["k"]
        fp = state["order"][: k + 1]
        th = _th(state)
        loss = walker.whole([Config(all_ops(problem) - set(fp), th)])[0]
        _record(state, "ordered", {"float": list(fp)}, loss)
        state["curve"].append([len(fp), _similarity(loss)])
        state["k"] = k + 1
        events = [f"float layers {fp}: similarity {_similarity(loss)}"]
        if _similarity(loss) > self.expected_cos or len(fp) >= min(self.max_float_layers, len(state["order"])):
            state["float_layers"] = list(fp) if _similarity(loss) > self.expected_cos else self._best_curve(state)
            state["done"] = True
        return events

    @staticmethod
    def _best_curve(state: dict) -> list[str]:
        # the target was not reached: the prefix with the best similarity (the first on a tie)
        best = max(range(len(state["curve"])), key=lambda j: (state["curve"][j][1], -j))
        return list(state["order"][: state["curve"][best][0]])


# --------------------------------------------------------------------------------------------- variants
class Variant(_Ordered):
    """Common settings; a subclass implements ``init`` and ``update``."""

    name = "variant"

    def __init__(self, *, expected_cos: float = 0.99, max_float_layers: int = 5, unit_len: int = 2,
                 top_k: int = 10, grid_size: int = 16, grid_bounds: Mapping[str, tuple[float, float]] | None = None,
                 optax_steps: int = 50, optax_lr: float = 0.02, float_budget_macs: float = 0.1,
                 score: str = "taylor", seed: int = 0):
        self.expected_cos = float(expected_cos)
        self.max_float_layers = int(max_float_layers)
        self.unit_len = int(unit_len)
        self.top_k = int(top_k)
        self.grid_size = int(grid_size)
        self.grid_bounds = dict(grid_bounds or {})
        self.optax_steps = int(optax_steps)
        self.optax_lr = float(optax_lr)
        self.float_budget_macs = float(float_budget_macs)
        self.score = score
        self.seed = int(seed)
        if self.max_float_layers < 0:
            raise SearchError(f"--max_float_layers {max_float_layers} must be >= 0")
        if self.unit_len < 1:
            raise SearchError(f"--unit_len {unit_len} must be >= 1")
        if score not in GRAD_SCORES:
            raise SearchError(f"--score {score}: use one of {', '.join(GRAD_SCORES)}")

    def settings(self) -> dict:
        """What the results depend on (part of the resume fingerprint and of search.json)."""
        return {"variant": self.name, "expected_cos": self.expected_cos, "max_float_layers": self.max_float_layers,
                "unit_len": self.unit_len, "top_k": self.top_k, "grid_size": self.grid_size,
                "grid_bounds": {k: list(map(float, v)) for k, v in sorted(self.grid_bounds.items())},
                "optax_steps": self.optax_steps, "optax_lr": self.optax_lr,
                "float_budget_macs": self.float_budget_macs, "score": self.score, "seed": self.seed}

    def init(self, problem: Problem) -> dict:
        return _base_state(self.name, problem.th0)

    def done(self, problem: Problem, state: dict) -> bool:
        return bool(state["done"])

    def total_units(self, problem: Problem, state: dict) -> int:
        """For the progress bar: the units this variant will run at most."""
        return max(1, self.max_float_layers + 1)


class AutoN(Variant):
    """Greedy forward selection with exact joint evaluation (one walk per step)."""

    name = "auto_n"

    def init(self, problem: Problem) -> dict:
        s = super().init(problem)
        s.update(phase="greedy", float_layers=[], order=[], curve=[])
        return s

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        fp = list(state["float_layers"])
        if not state["curve"]:  # step 0: the all-INT8 model
            loss0 = walker.whole([Config(all_ops(problem), _th(state))])[0]
            _record(state, "greedy", {"float": []}, loss0)
            state["curve"].append([0, _similarity(loss0)])
            if _similarity(loss0) > self.expected_cos or self.max_float_layers == 0:
                state["done"] = True
            return state, [f"all-INT8 similarity {_similarity(loss0)}"]
        losses = leave_one_out_walk(problem, walker, state, "greedy", fp)
        if not losses:
            state["done"] = True
            return state, ["no op left to set float"]
        best = rank(losses, problem, descending=False)[0]
        fp.append(best)
        sim = _similarity(losses[best])
        state["float_layers"] = fp
        state["order"] = fp
        state["curve"].append([len(fp), sim])
        state["units"] += 1
        if sim > self.expected_cos or len(fp) >= self.max_float_layers or len(fp) >= len(int8_capable(problem)):
            state["done"] = True
        return state, [f"step {len(fp)}: {len(losses)} candidates, best {best}, similarity {sim}"]


class AutoNOrdered(Variant):
    """Leave-one-in ranking (one walk), then ops added in that order with an exact check per step."""

    name = "auto_n_ordered"

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        if state["phase"] == "start":
            losses = leave_one_in_walk(problem, walker, state, "leave_one_in")
            state.update(phase="ordered", order=rank(losses, problem), k=0, curve=[], scores=losses)
            return state, [f"leave-one-in ranking of {len(losses)} ops"]
        return state, self.ordered_step(problem, walker, state)


class LeaveOneOut(Variant):
    """Everything INT8 but one op (one walk); the top gains are float."""

    name = "leave_one_out"

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        loss0 = walker.whole([Config(all_ops(problem), _th(state))])[0]
        _record(state, "all_int8", {"float": []}, loss0)
        losses = leave_one_out_walk(problem, walker, state, "leave_one_out")
        gains = {o: loss0 - v for o, v in losses.items()}
        order = rank(gains, problem)
        state.update(scores=gains, order=order, float_layers=order[: self.max_float_layers], done=True,
                     all_int8_loss=loss0)
        return state, [f"leave-one-out: {len(gains)} ops, best gain {order[0]} {gains[order[0]]}" if order else
                       "leave-one-out: no INT8 op"]


class Neighbour(Variant):
    """Units of up to ``unit_len`` consecutive producer->consumer ops, scored with only the unit INT8."""

    name = "neighbour"

    def units(self, problem: Problem) -> list[list[str]]:
        g = problem.graph
        ok = set(int8_capable(problem))
        units = [[o] for o in int8_capable(problem)]
        frontier = [[o] for o in int8_capable(problem)]
        for _ in range(self.unit_len - 1):
            nxt = []
            for u in frontier:
                for t in g.op(u[-1]).outputs:
                    for c in g.consumers(t):
                        if c.name in ok and c.name not in u:
                            nxt.append(u + [c.name])
            units += nxt
            frontier = nxt
        return units

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        pos = _pos(problem)
        th = _th(state)
        units = self.units(problem)
        tasks: dict[int, list[Config]] = {}
        where = []
        for u in units:
            i = min(pos[o] for o in u)
            tasks.setdefault(i, []).append(Config(frozenset(u), th))
            where.append((i, len(tasks[i]) - 1))
        res = walker.walk(Config(frozenset(), th), tasks)
        single = {u[0]: res[i][k] for u, (i, k) in zip(units, where) if len(u) == 1}
        rows = []
        for u, (i, k) in zip(units, where):
            loss = res[i][k]
            inter = loss - sum(single[o] for o in u)
            rows.append({"unit": u, "loss": loss, "interaction": inter})
            _record(state, "unit", {"int8": u, "interaction": inter}, loss)
        order = sorted(range(len(rows)), key=lambda j: (-rows[j]["loss"], j))
        fp: list[str] = []
        for j in order:
            if len(fp) >= self.max_float_layers:
                break
            new = [o for o in rows[j]["unit"] if o not in fp]
            if new and len(fp) + len(new) <= self.max_float_layers:
                fp += new
        state.update(units_scored=rows, float_layers=fp, order=fp, done=True)
        n_pairs = sum(1 for r in rows if len(r["unit"]) > 1)
        return state, [f"neighbour: {len(rows)} units ({n_pairs} chains), float {fp}"]


class GradScreen(Variant):
    """Straight-through gradient scores for every op, exact leave-one-out for the top ``top_k`` only."""

    name = "grad_screen"

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        from .gradient import grad_scores

        if state["phase"] == "start":
            r = grad_scores(problem, _th(state))
            grad = {k: dict(zip(r["ops"], map(float, r[k]))) for k in GRAD_SCORES}
            sc = grad[self.score]
            state.update(phase="exact", grad={**grad, "loss": float(r["loss"]), "seconds": float(r["seconds"])},
                         screen_order=rank(sc, problem))
            return state, [f"gradient screen ({self.score}) of {len(sc)} ops in {r['seconds']:.2f} s"]
        top = state["screen_order"][: self.top_k]
        loss0 = state["grad"]["loss"]
        losses = leave_one_out_walk(problem, walker, state, "exact_top_k", ops=top)
        gains = {o: loss0 - v for o, v in losses.items()}
        order = rank(gains, problem)
        state.update(scores=gains, order=order, float_layers=order[: self.max_float_layers], done=True)
        return state, [f"exact leave-one-out of the top {len(top)}: float {state['float_layers']}"]


class ThresholdGrid(Variant):
    """Per op, in graph order: the best of ``grid_size`` thresholds in the all-INT8 model; then float layers."""

    name = "threshold_grid"

    def grid(self, problem: Problem, tensor: str, current: float) -> list[float]:
        if tensor not in self.grid_bounds:
            raise SearchError(f"threshold_grid: no 99.9th percentile / max for tensor {tensor!r} (calibrate first)")
        lo, hi = self.grid_bounds[tensor]
        lo = min(lo, hi)
        vals = np.linspace(lo, hi, self.grid_size, dtype=np.float64).astype(np.float32) if self.grid_size > 1 else \
            np.array([hi], np.float32)
        out = [float(current)]
        for v in vals:
            if float(v) > 0 and float(v) not in out:
                out.append(float(v))
        return out

    def total_units(self, problem: Problem, state: dict) -> int:
        return len(int8_capable(problem)) + 2 + self.max_float_layers

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        if state["phase"] == "start":
            loss0 = walker.whole([Config(all_ops(problem), _th(state))])[0]
            _record(state, "all_int8", {"float": []}, loss0)
            state.update(phase="grid", k=0, int8_before=_similarity(loss0), best_loss=loss0)
            return state, [f"all-INT8 similarity before: {_similarity(loss0)}"]
        if state["phase"] == "grid":
            return self._grid_step(problem, state, walker)
        if state["phase"] == "rank":
            return _rank_for_float_layers(self, problem, state, walker)
        return state, self.ordered_step(problem, walker, state)

    def _grid_step(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        ops = int8_capable(problem)
        name = ops[state["k"]]
        op = problem.graph.op(name)
        t = op.outputs[0]
        idx = problem.plan.tensor_index[t]
        th = _th(state)
        cands = self.grid(problem, t, float(th[idx]))
        i = _pos(problem)[name]
        configs = [Config(all_ops(problem), problem.with_output(th, t, c)) for c in cands]
        losses = walker.walk(Config(all_ops(problem), th), {i: configs})[i]
        best = int(np.argmin(losses))  # first minimum: the current threshold (index 0) wins ties
        for c, l in zip(cands, losses):
            _record(state, "grid", {"tensor": t, "threshold": c}, l)
        th[idx] = np.float32(cands[best])
        state["th"] = [float(v) for v in th]
        state["best_loss"] = float(losses[best])
        state["k"] += 1
        if state["k"] >= len(ops):
            state.update(phase="rank", int8_after=_similarity(state["best_loss"]))
        return state, [f"{name}: {len(cands)} thresholds, best {cands[best]} (loss {losses[best]})"]


class ThresholdOptax(ThresholdGrid):
    """Adam on log-thresholds (straight-through all-INT8 model); then float layers as threshold_grid."""

    name = "threshold_optax"

    def total_units(self, problem: Problem, state: dict) -> int:
        return 3 + self.max_float_layers

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        if state["phase"] == "start":
            from .gradient import refine_thresholds

            r = refine_thresholds(problem, _th(state), steps=self.optax_steps, lr=self.optax_lr, seed=self.seed)
            th = np.asarray(r["thresholds"], np.float32)
            loss_exact = walker.whole([Config(all_ops(problem), th)])[0]
            _record(state, "optax", {"steps": self.optax_steps}, loss_exact)
            state.update(th=[float(v) for v in th], phase="rank", int8_before=_similarity(r["loss0"]),
                         int8_after=_similarity(loss_exact), history=[float(v) for v in r["history"]],
                         optax_seconds=float(r["seconds"]))
            return state, [f"optax: all-INT8 similarity {_similarity(r['loss0'])} -> {_similarity(loss_exact)}"]
        if state["phase"] == "rank":
            return _rank_for_float_layers(self, problem, state, walker)
        return state, self.ordered_step(problem, walker, state)


def _rank_for_float_layers(v: Variant, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
    """After a threshold search: leave-one-out ranking on the new table, then the ordered exact checks."""
    loss0 = 1.0 - state["int8_after"]
    if state["int8_after"] > v.expected_cos or v.max_float_layers == 0:
        state.update(phase="done", order=[], float_layers=[], done=True, curve=[[0, state["int8_after"]]])
        return state, ["the new table meets expected_cos with no float layer"]
    losses = leave_one_out_walk(problem, walker, state, "leave_one_out")
    gains = {o: loss0 - l for o, l in losses.items()}
    state.update(phase="ordered", order=rank(gains, problem), k=0, curve=[[0, state["int8_after"]]], scores=gains)
    return state, [f"leave-one-out ranking on the new table ({len(gains)} ops)"]


class CostAware(Variant):
    """Leave-one-out gains per float MAC; prefix sets scored exactly; Pareto front; the best within budget."""

    name = "cost_aware"

    def total_units(self, problem: Problem, state: dict) -> int:
        return 2 + self.max_float_layers

    def budget(self, problem: Problem) -> float:
        total = sum(c["macs"] for c in op_costs(problem).values())
        return self.float_budget_macs * total if self.float_budget_macs <= 1 else self.float_budget_macs

    def update(self, problem: Problem, state: dict, walker: Walker) -> tuple[dict, list[str]]:
        costs = op_costs(problem)
        if state["phase"] == "start":
            loss0 = walker.whole([Config(all_ops(problem), _th(state))])[0]
            _record(state, "all_int8", {"float": []}, loss0)
            losses = leave_one_out_walk(problem, walker, state, "leave_one_out")
            gains = {o: loss0 - l for o, l in losses.items()}
            # gain per float MAC (+1 MAC so ops without MACs rank by gain); only helpful ops (gain > 0)
            eff = {o: g / (costs[o]["macs"] + 1.0) for o, g in gains.items() if g > 0}
            state.update(phase="front", scores=gains, order=rank(eff, problem), k=0,
                         points=[{"float": [], "macs": 0, "bytes_f32": 0, "similarity": _similarity(loss0)}])
            return state, [f"cost-aware: {len(eff)} helpful ops of {len(gains)}"]
        k = state["k"]
        fp = state["order"][: k + 1]
        loss = walker.whole([Config(all_ops(problem) - set(fp), _th(state))])[0]
        _record(state, "front", {"float": list(fp)}, loss)
        state["points"].append({"float": list(fp), "macs": sum(costs[o]["macs"] for o in fp),
                                "bytes_f32": sum(costs[o]["bytes_f32"] - costs[o]["bytes_int8"] for o in fp),
                                "similarity": _similarity(loss)})
        state["k"] = k + 1
        if state["k"] >= min(len(state["order"]), max(self.max_float_layers, 1)):
            budget = self.budget(problem)
            pts = state["points"]
            front = pareto_front(pts)
            within = [p for p in pts if p["macs"] <= budget]
            best = max(within, key=lambda p: (p["similarity"], -len(p["float"])))
            state.update(front=front, budget_macs=budget, float_layers=best["float"], done=True)
        return state, [f"float {fp}: {state['points'][-1]['macs']} MACs, similarity {_similarity(loss)}"]


def pareto_front(points: Sequence[Mapping]) -> list[int]:
    """Indices of the points no other point dominates (fewer or equal float MACs and higher similarity)."""
    out = []
    for i, p in enumerate(points):
        if not any((q["macs"] <= p["macs"] and q["similarity"] > p["similarity"]) or
                   (q["macs"] < p["macs"] and q["similarity"] >= p["similarity"]) for q in points):
            out.append(i)
    return out


STRATEGIES = {c.name: c for c in (AutoN, AutoNOrdered, Neighbour, LeaveOneOut, GradScreen, ThresholdGrid,
                                   ThresholdOptax, CostAware)}


def make_variant(name: str, **kw) -> Variant:
    if name not in STRATEGIES:
        raise SearchError(f"--variant {name}: choose one of sensitive, {', '.join(VARIANTS)}")
    return STRATEGIES[name](**kw)


def run_variant(problem: Problem, variant: Variant, state: dict | None = None, walker: Walker | None = None) -> dict:
    """Drive a variant to its end without I/O (the job adds checkpoints, logs and files around the same loop)."""
    walker = walker or Walker(problem)
    state = state if state is not None else variant.init(problem)
    while not variant.done(problem, state):
        state, _ = variant.update(problem, state, walker)
    return state
