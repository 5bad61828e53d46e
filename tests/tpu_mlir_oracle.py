"""qsens against what the real TPU-MLIR produced (fixtures written by ``reference/tpu_mlir/run.py``).

A fixture directory holds ``meta.json`` (TPU-MLIR version, flags, commands), ``ops.json`` (the Top op list),
``cali_table`` (run_calibration, KL tuned), ``sensitive/`` (run_sensitive_layer's outputs) and ``int8/``
(the BM1684 INT8 model of ``cali_table`` run by TPU-MLIR's interpreter on ``inputs.npz``: per-tensor
``qinfo.json`` and integer codes ``int8.npz``); some also ``int8_bm1684x/`` (the same for BM1684X).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures" / "tpu_mlir"


@dataclass
class Fixture:
    path: Path
    meta: dict
    ops: list[dict]

    @property
    def flags(self) -> dict:
        return self.meta["flags"]

    def file(self, *parts) -> Path:
        return self.path.joinpath(*parts)

    def json(self, *parts):
        return json.loads(self.file(*parts).read_text())

    def npz(self, *parts) -> dict[str, np.ndarray]:
        with np.load(self.file(*parts)) as z:
            return {k: z[k] for k in z.files}


def load(name: str) -> Fixture:
    p = FIXTURES / name
    return Fixture(p, json.loads((p / "meta.json").read_text()), json.loads((p / "ops.json").read_text()))


def available() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir()
                  if (p / "meta.json").exists() and (p / "ops.json").exists()) if FIXTURES.exists() else []


def model_path(fx: Fixture, models_dir: Path | None = None) -> Path:
    """The ONNX model of a fixture: inside the fixture (generated nets) or in the zoo."""
    local = fx.path / fx.meta["model"]
    if local.exists():
        return local
    from qsens.zoo import zoo_path

    return Path(zoo_path(fx.meta["model"]))


def input_shapes(fx: Fixture):
    s = fx.flags.get("input_shapes")
    return json.loads(s) if s else None


def int8_values(fx: Fixture, model, params, taps, table_path: Path | None = None, chip=None, sub: str = "int8"):
    """``(plan, {tensor: value})`` of qsens's all-INT8 model on the fixture's inputs (dequantized floats); ``chip``
    (a :class:`qsens.quant.ChipSpec`, default BM1684) and ``sub`` (the dump folder, e.g. ``int8_bm1684x``)."""
    from qsens.quant import BM1684
    from qsens.quant.mixed import MixedModel, plan_from_table, thresholds_from_table
    from qsens.tables import read_cali_table

    g = model.graph
    table = read_cali_table(table_path or fx.file("cali_table"))
    plan = plan_from_table(g, table, chip or BM1684)
    th = thresholds_from_table(g, table)
    inputs = fx.npz(sub, "inputs.npz")
    mm = MixedModel(model, plan)
    mask = np.array([op.name not in plan.f32_reason for op in g.ops])
    n = len(next(iter(inputs.values())))
    per = [mm.apply(params, {k: v[i : i + 1] for k, v in inputs.items()}, th, mask, taps=tuple(taps))[1] for i in range(n)]
    return plan, {t: np.concatenate([np.asarray(p[t]) for p in per]) for t in taps}  # sample by sample, as TPU-MLIR


def int8_codes(fx: Fixture, model=None, params=None, table_path: Path | None = None, chip=None, sub: str = "int8"):
    """qsens's all-INT8 model (``chip``, default BM1684) of the fixture's table on TPU-MLIR's preprocessed inputs
    (``sub``: the dump folder).

    Returns ``(plan, codes, scales)``: per canonical tensor the integer codes (int32, dequantized values
    re-quantized with qsens's effective threshold) and qsens's scale and signedness."""
    import jax.numpy as jnp

    import qsens.onnx
    from qsens.quant.kernels import quantize
    from qsens.quant.mixed import thresholds_from_table
    from qsens.tables import read_cali_table

    if model is None:
        fn, params = qsens.onnx.to_jax(str(model_path(fx)), input_shapes(fx))
        model = fn.model
    plan, vals = int8_values(fx, model, params, model.graph.tensors, table_path, chip, sub)
    th = thresholds_from_table(model.graph, read_cali_table(table_path or fx.file("cali_table")))
    eff = np.asarray(plan.effective(th))
    codes, scales = {}, {}
    for i, t in enumerate(model.graph.tensors):
        s = plan.signed[t]
        codes[t] = np.asarray(quantize(jnp.asarray(vals[t]), float(eff[i]), s))
        scales[t] = (float(np.float32(eff[i]) / np.float32(127.0 if s else 255.0)), s)
    return plan, codes, scales
