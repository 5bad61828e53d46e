"""``qsens calibrate``: streaming statistics over the calibration set, thresholds of every method, the
SimpleTuner, and TPU-MLIR calibration tables.

What runs where (measured on the 2-core CPU, README "Performance"):

* the float forward runs op by op through :class:`qsens.engine.Engine` (shared per-signature executables),
  keeping every canonical tensor of one batch;
* the statistics are host NumPy (:mod:`qsens.calib.stats`): min/max, the 2048-bin histograms (``v1``: an
  exact abs-max pass, then histograms of one width, order-independent; ``v2``: TPU-MLIR's per-sample
  streaming merge), percentile tails, MSE (only when asked for) -- memory does not grow with ``input_num``;
  activations are consumed in the engine's layout (NHWC for channel-last tensors): every statistic is
  invariant to the element order within a sample;
* the SimpleTuner evaluates each op alone on ``tune_num`` samples for its 22 candidate thresholds in one
  vmapped, jit-compiled call per op signature.

Decision (spec §2.6 "to verify"): the tuner runs ops with float weights (TPU-MLIR's
``fake_quant_weight`` copies the weight buffer before rounding it, so it leaves the weights unchanged).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import calib
from .engine import CompileStats, Engine
from .errors import QsensError
from .onnx.convert import Model, op_runs_nhwc, run_op_planned
from .pipeline import iter_inputs

METHODS = ("max", "percentile9999", "kl", "mse")
#: Method spelling of the docs-era sensitive-layer search (SL-old) and its log lines.
SL_NAMES = {"max": "MAX", "percentile9999": "Percentile9999", "kl": "KL", "mse": "MSE"}


def parse_method(m: str) -> str:
    k = m.strip().lower().removeprefix("use_")
    k = {"percentile": "percentile9999", "p9999": "percentile9999"}.get(k, k)
    if k not in METHODS:
        raise QsensError(f"unknown calibration method {m!r}; use one of {', '.join(METHODS)}")
    return k


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of one statistics pass: per-tensor statistics and per-method thresholds."""

    tensors: tuple[str, ...]
    stats: dict[str, calib.CalibResult]
    untuned: dict[str, dict[str, float]]  # method -> tensor -> threshold (as written to <table>_<m>.1)
    tuned: dict[str, dict[str, float]]  # method -> tensor -> threshold after SimpleTuner
    n_samples: int
    tune_num: int
    hist: str
    timings: dict[str, float]

    def minmax(self, method: str, tensor: str) -> tuple[float, float]:
        r = self.stats[tensor]
        if method == "percentile9999":
            return float(r.p99_min), float(r.p99_max)
        return float(r.min), float(r.max)

    def table_entries(self, method: str, tuned: bool = True) -> dict[str, tuple[float, float, float]]:
        ths = (self.tuned if tuned else self.untuned)[method]
        return {t: (ths[t],) + self.minmax(method, t) for t in self.tensors}


def _progress(total: int, desc: str, enabled: bool, unit: str = "img"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def _forward_batches(engine: Engine, files, pp, batch: int, keep: Sequence[str]):
    """Yield (offset, {tensor: np.ndarray (n, ...)}) for consecutive batches (last one padded, then sliced)."""
    off = 0
    for inp in iter_inputs(files, engine.graph, pp, batch):
        n = next(iter(inp.values())).shape[0]
        if n < batch:
            inp = {k: np.concatenate([v, np.repeat(v[-1:], batch - n, 0)]) for k, v in inp.items()}
        env = engine.run(engine.input_env(inp), keep=keep)
        yield off, {t: np.asarray(env[t])[:n] for t in keep}
        off += n


def collect_statistics(model: Model, files, pp, *, methods: Sequence[str], hist: str = "v1", batch: int = 16,
                       progress: bool = True, stats: CompileStats | None = None) -> dict[str, calib.CalibResult]:
    g = model.graph
    tensors = g.tensors
    op_index = {t: g.index(g.producer(t).name) for t in tensors}
    n = len(files)
    batch = max(1, min(batch, n))
    engine = Engine(model, batch, stats=stats)
    state = calib.init(tensors, len(g.ops), n_samples=n, op_index=op_index, mode=hist,
                       absmax_mse=g.inputs, mse="mse" in methods)
    passes = 2 if hist == "v1" else 1
    for p in range(passes):
        bar = _progress(n, f"calibration pass {p + 1}/{passes}" if passes > 1 else "calibration", progress)
        for off, acts in _forward_batches(engine, files, pp, batch, tensors):
            state = calib.update(state, acts, off)
            if bar:
                bar.update(next(iter(acts.values())).shape[0])
        if bar:
            bar.close()
        if hist == "v1" and p == 0:
            state = calib.begin_histograms(state)
    return calib.finalize(state)


def round_table(th: float) -> float:
    """A threshold as TPU-MLIR reads it back from a table written with ``%.7f``."""
    return float(f"{th:.7f}")


def tune(model: Model, tune_inputs: dict[str, np.ndarray], table: dict[str, float], amax: dict[str, float], *,
         stats: CompileStats | None = None, progress: bool = False) -> dict[str, float]:
    """SimpleTuner (spec §2.6) over the canonical op list; returns the tuned table (thresholds only grow)."""
    n = next(iter(tune_inputs.values())).shape[0]
    engine = Engine(model, n, stats=stats)
    g = engine.graph
    env_all = engine.run(engine.input_env(tune_inputs), keep=g.tensors)
    table = dict(table)
    tuned: set[str] = set()
    cache: dict[tuple, Any] = {}
    bar = _progress(len(g.ops) - 1, "tuning", progress, unit="op")
    for i, op in enumerate(g.ops):
        if op.type == "Input":
            continue
        if bar:
            bar.update(1)
        if not op.inputs:
            continue
        todo = [op.inputs[0]] if all(t in tuned for t in op.inputs) else [t for t in op.inputs if t not in tuned]
        for t in todo:
            tuned.add(t)
            cands = calib.tune_candidates(table[t], amax[t])
            if cands.size == 0:
                continue
            fn = _tune_exe(engine, i, cache)
            d = engine.call(fn, engine.weights(op), [env_all[x] for x in op.inputs], env_all[op.outputs[0]],
                            jnp.asarray(cands, jnp.float32))
            table[t] = float(calib.select(table[t], cands, np.asarray(d, np.float64), current=table[t]))
    if bar:
        bar.close()
    return table


def _tune_exe(engine: Engine, i: int, cache: dict):
    from .engine import op_signature

    op = engine.graph.ops[i]
    in_nhwc = tuple(bool(engine.plan.get(t)) for t in op.inputs)
    out_nhwc = op_runs_nhwc(op, engine.plan)
    key = ("tune",) + op_signature(op, engine.params, in_nhwc, out_nhwc)
    fn = Engine._shared.get(key)
    if fn is None:
        def f(weights, acts, ref, cands, _op=op, _in=in_nhwc, _out=out_nhwc):
            def one(c):
                xs = [calib.fake_quant(a, c) for a in acts]
                return calib.mean_distance(ref, run_op_planned(_op, weights, xs, _in, _out)[0])

            return jax.vmap(one)(cands)

        fn = jax.jit(f)
        Engine._shared[key] = fn
    return fn


def calibrate(model: Model, files: Sequence[str], pp, *, methods: Sequence[str] = ("kl",), hist: str = "v1",
              tune_num: int = 5, tune_methods: Sequence[str] | None = None, batch: int = 16,
              progress: bool = True, stats: CompileStats | None = None) -> Calibration:
    """Statistics over ``files`` and thresholds of ``methods``; SimpleTuner on the first ``tune_num`` samples.

    ``tune_methods`` (default: ``["kl"]`` like run_calibration; the sensitive-layer search tunes every method,
    which changes only KL/MSE: MAX and Percentile are their own upper bound) are tuned, the rest are copied.
    """
    methods = [parse_method(m) for m in methods]
    if hist not in ("v1", "v2"):
        raise QsensError(f"--hist must be v1 or v2, got {hist!r}")
    if not files:
        raise QsensError("no calibration samples")
    t0 = time.perf_counter()
    res = collect_statistics(model, files, pp, methods=methods, hist=hist, batch=batch, progress=progress, stats=stats)
    t1 = time.perf_counter()
    g = model.graph
    untuned = {m: {t: calib.table_threshold(res[t].threshold(m)) for t in g.tensors} for m in methods}
    # thresholds as the tools downstream read them back from the %.7f tables (the tuner may refine KL/MSE)
    tuned = {m: {t: round_table(v) for t, v in ths.items()} for m, ths in untuned.items()}
    tune_methods = ["kl"] if tune_methods is None else [parse_method(m) for m in tune_methods]
    n_tune = min(tune_num, len(files))
    if n_tune > 0 and any(m in tune_methods for m in methods):
        tune_in = next(iter_inputs(files[:n_tune], g, pp, n_tune))
        for m in methods:
            if m not in tune_methods:
                continue
            start = tuned[m]
            amax = {t: (res[t].p99 if m == "percentile9999" else res[t].abs_max) for t in g.tensors}
            tuned[m] = tune(model, tune_in, start, amax, stats=stats, progress=progress)
    t2 = time.perf_counter()
    return Calibration(tuple(g.tensors), res, untuned, tuned, len(files), n_tune, hist,
                       {"statistics_s": t1 - t0, "tune_s": t2 - t1})


def write_tables(cal: Calibration, out: str, *, main_method: str, mlir: str, write_method_tables: bool = True) -> list[str]:
    """Write ``out`` (main method; tuned) and ``<out>_<method>.1`` / ``<out>_<method>_tune`` for every method."""
    from .tables import write_cali_table

    written = []
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    for m in cal.untuned:
        if write_method_tables:
            for suffix, tuned, tn in ((".1", False, None), ("_tune", True, cal.tune_num)):
                p = f"{out}_{m}{suffix}"
                write_cali_table(p, cal.table_entries(m, tuned), method=m, mlir=mlir, histogram_bins=2048,
                                 sample_number=cal.n_samples, tune_number=tn)
                written.append(p)
    tn = cal.tune_num if main_method in ("kl", "mse") else None
    write_cali_table(out, cal.table_entries(main_method, True), method=main_method, mlir=mlir, histogram_bins=2048,
                     sample_number=cal.n_samples, tune_number=tn)
    written.append(out)
    return written
