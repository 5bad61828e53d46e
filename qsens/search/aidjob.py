"""The accuracy aids as TPU-MLIR's ``run_calibration.py`` runs them: ``--sq``, then ``--we``, then calibration,
then ``--bc`` on that table (the re-calibration that follows is the caller's: ``qsens calibrate`` / ``search``
calibrate the written model).  The result is the aided model written as ONNX (the original file with its
initializers rewritten: :func:`qsens.onnx.rewrite.write_edited_onnx`) plus ``<model>.aids.json`` (every pair,
scale, bias attempt and decision), so TPU-MLIR's ``model_transform.py`` on that ONNX reproduces the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import QsensError

WE_RELU6 = ("tpu_mlir", "skip")


@dataclasses.dataclass(frozen=True)
class AidSettings:
    """``run_calibration.py``'s flags for the aids (its defaults) plus qsens's ``we_relu6``."""

    we: bool = False
    bc: bool = False
    sq: bool = False
    we_relu6: str = "tpu_mlir"
    bc_inference_num: int = 30
    min_layer_cos: float = 0.99
    expected_cos: float = 0.99

    @property
    def any(self) -> bool:
        return self.we or self.bc or self.sq

    def tag(self) -> str:
        return "+".join(k for k in ("sq", "we", "bc") if getattr(self, k)) or "none"

    def validate(self) -> None:
        if self.we_relu6 not in WE_RELU6:
            raise QsensError(f"--we_relu6 must be one of {', '.join(WE_RELU6)}, got {self.we_relu6!r}")
        if int(self.bc_inference_num) < 1:
            raise QsensError(f"--bc_inference_num must be >= 1, got {self.bc_inference_num}")
        for k in ("min_layer_cos", "expected_cos"):
            v = float(getattr(self, k))
            if not (0.0 <= v <= 1.0) or v != v:
                raise QsensError(f"--{k} must be in [0, 1] (TPU-MLIR scale 0.5+0.5*cos), got {v}")


@dataclasses.dataclass
class AidResult:
    model: str  # the aided ONNX
    record: dict
    params: dict  # the aided canonical params (host arrays)


def apply_aids(model_path: str, input_shapes, settings: AidSettings, out_model: str, *,
               cal_files: Sequence[str], bc_files: Sequence[str], make_pp: Callable, name_style: str = "tpu_mlir",
               tune_num: int = 5, batch: int | None = None, progress: bool = False,
               echo: Callable[[str], None] = print) -> AidResult:
    """Run the aids of ``settings`` on ``model_path`` and write the aided model to ``out_model``.

    ``cal_files``: the calibration samples (``--input_num``; SmoothQuant's statistics and the calibration that
    bias correction starts from, KL tuned on ``tune_num`` like run_calibration); ``bc_files``: the
    ``--bc_inference_num`` samples bias correction scores; ``make_pp(graph)``: the preprocessing."""
    from ..calib.aids import (
        insert_mul_after_ln,
        lns_needing_mul,
        shift_bias,
        smooth_ops,
        smoothquant,
        weight_equalization,
    )
    from ..calibrate import calibrate
    from ..onnx import to_jax
    from ..onnx.rewrite import write_edited_onnx
    from ..pipeline import load_inputs
    from ..tables import CaliTable
    from .biascorr import run_bias_correction
    from .problem import Problem

    settings.validate()
    t0 = time.time()
    fn, params0 = to_jax(model_path, input_shapes, name_style=name_style)
    g = fn.graph
    host0 = {k: np.asarray(v) for k, v in params0.items()}
    params = dict(host0)
    edits: list[dict] = []
    rec: dict = {"model": os.path.abspath(model_path), "aids": settings.tag(), "settings": dataclasses.asdict(settings),
                 "order": "sq, we, calibration, bc (TPU-MLIR run_calibration.py)"}
    tmp_model = None
    if settings.sq:
        ln_mul = lns_needing_mul(g)
        plain = set(smooth_ops(g, params))
        ops = [op.name for op in g.ops if op.name in plain or op.name in ln_mul]
        rec["sq"] = {"smooth_ops": [f"Mul_after_{n}" if n in ln_mul else n for n in ops]}
        if ops:  # the smoothed ops' float outputs on the calibration samples (the original model), then the rewrite
            pp = make_pp(g)
            x = load_inputs(cal_files, g, pp)
            outs = [op.outputs[0] for op in g.ops if op.name in ops]
            acts: dict[str, list] = {n: [] for n in ops}
            for j in range(len(cal_files)):
                _, tapped = fn(params0, {k: v[j : j + 1] for k, v in x.items()}, taps=tuple(outs))
                for n, t in zip(ops, outs):
                    acts[n].append(np.asarray(tapped[t], np.float32))
            params, sq_rec = smoothquant(g, params, acts)
            rec["sq"]["ops"] = sq_rec
            if ln_mul:
                # TPU-MLIR's insert_mul_after_ln, in ONNX: the smoothed weights written, then a Mul by 1/s after each
                # post-LN LayerNorm (users {Add, MatMul}) in front of its MatMuls; the later aids and the aided file
                # continue from that model
                os.makedirs(os.path.dirname(os.path.abspath(out_model)), exist_ok=True)
                mul_model = tmp_model = os.path.splitext(out_model)[0] + ".mul_after_ln.onnx"
                write_edited_onnx(model_path, mul_model, g, host0, params)
                rec["sq"]["mul_after_ln"] = insert_mul_after_ln(g, mul_model, mul_model, params)
                model_path = mul_model
                fn, params0 = to_jax(model_path, input_shapes, name_style=name_style)
                g = fn.graph
                host0 = {k: np.asarray(v) for k, v in params0.items()}
                params = dict(host0)
                echo(f"SmoothQuant: a Mul inserted after {len(ln_mul)} LayerNorm(s) feeding an Add and MatMuls "
                     f"({', '.join(ln_mul)}), as TPU-MLIR's insert_mul_after_ln")
            echo(f"SmoothQuant: {len(ops)} ops smoothed ({', '.join(ops[:4])}{', ...' if len(ops) > 4 else ''}) on "
                 f"{len(cal_files)} samples")
        else:
            echo("SmoothQuant: no LayerNorm or Mul whose users are all MatMul (TPU-MLIR smooths only those): "
                 "the model is unchanged")
    if settings.we:
        params, we_rec = weight_equalization(g, params, relu6=settings.we_relu6)
        edits += we_rec.pop("edits")
        applied = [p for p in we_rec["pairs"] if p["applied"]]
        rec["we"] = we_rec
        echo(f"weight equalization: {len(applied)} Conv pairs equalized"
             + (f" ({sum(p['bounded_relu'] for p in applied)} across a ReLU6 whose bound TPU-MLIR leaves at 6)"
                if settings.we_relu6 == "tpu_mlir" else " (pairs across a ReLU6 skipped)"))
    if settings.bc:
        import jax

        fn.model.params = {k: jax.device_put(v) for k, v in params.items()}
        pp = make_pp(g)
        cal = calibrate(fn.model, cal_files, pp, methods=("kl",), hist="v2", tune_num=tune_num, batch=batch,
                        progress=progress)
        problem = Problem.from_table(fn.model, CaliTable(cal.table_entries("kl")), load_inputs(bc_files, g, pp))
        deltas, bc_rec = run_bias_correction(problem, settings.min_layer_cos, settings.expected_cos)
        for name, d in deltas.items():
            params = shift_bias(params, g.op(name), d)
            edits.append({"op": name, "bias_add": d})
        rec["bc"] = bc_rec
        echo(f"bias correction: all-INT8 outputs_cos {bc_rec['all_int8_cos']:.6f}, {len(bc_rec['attempts'])} Conv "
             f"layers tried, {len(deltas)} kept, best outputs_cos {bc_rec['best_outputs_cos']:.6f} ({bc_rec['end']})")
    d = os.path.dirname(os.path.abspath(out_model))
    os.makedirs(d, exist_ok=True)
    written = write_edited_onnx(model_path, out_model, g, host0, params, edits)
    if tmp_model:
        os.remove(tmp_model)  # the intermediate model with the inserted Muls: the aided file holds them
    # the written file, converted again, must give the aided weights (merged convs: up to float rounding)
    _, back = to_jax(out_model, input_shapes, name_style=name_style)
    err = max((float(np.abs(np.asarray(back[k]) - params[k]).max() / (np.abs(params[k]).max() + 1e-30))
               for k in params if k in back), default=0.0)
    rec["written"] = {**written, "max_rel_param_error": err}
    rec["wall_s"] = round(time.time() - t0, 2)
    with open(os.path.splitext(out_model)[0] + ".aids.json", "w") as f:
        json.dump(rec, f, indent=1, default=_jsonable)
    echo(f"aided model ({settings.tag()}) written to {out_model} ({len(written['initializers'])} initializers changed)")
    return AidResult(out_model, rec, params)


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)
