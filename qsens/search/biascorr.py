"""TPU-MLIR's bias correction (``run_calibration.py --bc`` -> ``MixPrecSearcher.run_bias_correction``), faithful.

The walk is run_qtable's (:mod:`qsens.search.mixprec`): ops in graph order, the float model's activations and
the INT8 activations with accumulated error cached per image (each op's INT8 output from the cached INT8 outputs
of its inputs, the model's weights *before* any correction).  For a Conv with a bias, an INT8 consumer and layer
cos ``mean_images cos_sim(dequant(int8), float) < min_layer_cos``: ``bias += mean_images(mean_{N,H,W}(float)) -
mean_images(mean_{N,H,W}(int8))`` per output channel; the INT8 model with the new bias runs from that op on the
cached INT8 inputs (``invoke_from``), giving the op's new layer cos and the outputs cos.  The correction is
reverted when ``outputs_cos < best_outputs_cos`` or ``new_layer_cos < best_new_layer_cos`` (best over every
earlier *attempt*, reverted ones included, and the all-INT8 outputs cos to start); both bests are then updated
with the attempt's values whatever the decision.  The walk stops once the best outputs cos passes
``expected_cos``; nothing is done when the all-INT8 model already passes it (TPU-MLIR ``exit(0)``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .mixprec import Int8Prefix, _per_sample_cos, all_int8_similarity, int8_successors
from .problem import Problem


def _channel_means(problem: Problem, chunks, tensor: str) -> np.ndarray:
    """Sum over images of the per-image channel mean (float32, NCHW axes 0, 2, 3), padding removed."""
    e = problem.engine
    tot = None
    for v, c in zip(chunks, problem.counts):
        a = np.asarray(e.to_nchw(tensor, v), np.float32)[:c]
        for k in range(c):
            m = np.mean(a[k : k + 1], axis=(0, 2, 3))
            tot = m if tot is None else tot + m
    return tot


def _set_param(problem: Problem, op, key: str, value) -> None:
    """Replace one weight of the problem's model in place (the engines share the dict) and drop the memoized
    host copies and INT8 parameters of ``op``."""
    problem.engine.params[key] = jnp.asarray(np.asarray(value, np.float32))
    problem._hw.pop(op.name, None)
    problem.forget_qparams(op.name)


def bc_decision(outputs_cos: float, new_layer_cos: float, best_out: float, best_layer: float | None
                ) -> tuple[bool, float, float]:
    """TPU-MLIR's keep/revert rule for one attempt: ``(keep, best_out', best_layer')``.  Reverted when the outputs
    cos is below the best so far or the new layer cos is below the best *new layer cos of any earlier attempt*
    (another layer's); both bests take the attempt's values when larger, kept or not."""
    revert = outputs_cos < best_out or (best_layer is not None and new_layer_cos < best_layer)
    best_out = max(best_out, outputs_cos)
    best_layer = new_layer_cos if best_layer is None or new_layer_cos > best_layer else best_layer
    return not revert, best_out, best_layer


def run_bias_correction(problem: Problem, min_layer_cos: float = 0.99, expected_cos: float = 0.99,
                        progress=None) -> tuple[dict[str, np.ndarray], dict]:
    """The corrections TPU-MLIR keeps: ``{op name: per-channel bias shift}`` and a record (all-INT8 outputs cos,
    every attempt with old/new layer cos, outputs cos and the decision, the best outputs cos, how it ended).
    ``problem`` is the INT8 model of the table on ``--bc_inference_num`` images; its weights are changed during
    the walk and restored at the end."""
    g = problem.graph
    all_int8 = all_int8_similarity(problem)
    rec: dict = {"all_int8_cos": all_int8, "min_layer_cos": float(min_layer_cos), "expected_cos": float(expected_cos),
                 "samples": problem.n, "attempts": [], "end": None}
    if all_int8 > expected_cos:
        rec["end"] = "int8_above_expected"  # TPU-MLIR: "job success ... no need for mix precsion", exit(0)
        rec["best_outputs_cos"] = all_int8
        rec["applied"] = []
        return {}, rec
    ev = Int8Prefix()
    carry = ev.init(problem)
    th_eff = problem.plan.effective(problem.th0)
    originals: dict[str, tuple] = {}
    kept: dict[str, np.ndarray] = {}
    best_out, best_layer = all_int8, None
    try:
        for i, op in enumerate(g.ops):
            if progress:
                progress(i, op.name)
            have_next = op.type != "Input" and len(int8_successors(problem, op)) > 0
            if have_next and op.outputs[0] not in carry.int8[0]:
                carry = ev.int8_output(problem, carry, i, th_eff)
            carry = ev.advance_float(problem, carry)
            kb = op.weight("bias")
            if have_next and op.type == "Conv" and kb is not None:
                t = op.outputs[0]
                old_cos = ev.layer_cos(problem, carry, t)
                if old_cos < min_layer_cos:
                    n = problem.n
                    delta = (_channel_means(problem, [env[t] for env in carry.ref.envs], t)
                             - _channel_means(problem, [env[t] for env in carry.int8], t)) / np.float32(n)
                    bias0 = np.asarray(problem.engine.params[kb], np.float32)
                    originals.setdefault(op.name, (op, kb, bias0))
                    _set_param(problem, op, kb, bias0 + delta.astype(np.float32).reshape(bias0.shape))
                    outs, kept_t = ev.run_from(problem, carry, i, set(), th_eff, {t})
                    new_cos = float(np.mean(_per_sample_cos(problem, [k[t] for k in kept_t],
                                                            [env[t] for env in carry.ref.envs])))
                    outputs_cos = float(np.mean(problem.scorer.per_sample(outs)))
                    keep, best_out, best_layer = bc_decision(outputs_cos, new_cos, best_out, best_layer)
                    if keep:
                        kept[op.name] = delta.astype(np.float32)
                    else:
                        _set_param(problem, op, kb, bias0)
                    rec["attempts"].append({"op": op.name, "old_layer_cos": old_cos, "new_layer_cos": new_cos,
                                            "outputs_cos": outputs_cos, "applied": keep,
                                            "delta_abs_max": float(np.abs(delta).max())})
                    if best_out > expected_cos:
                        rec["end"] = "success"
                        break
            carry = ev.drop_dead(problem, carry, i)
        if rec["end"] is None:
            rec["end"] = "exhausted"
    finally:
        for op, kb, b0 in originals.values():
            _set_param(problem, op, kb, b0)
    rec["best_outputs_cos"] = best_out
    rec["applied"] = [a["op"] for a in rec["attempts"] if a["applied"]]
    return kept, rec
