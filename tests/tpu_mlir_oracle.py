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


def conv_tie_mask(fx: Fixture, plan, model, params, t: str, x_codes: np.ndarray, table_path: Path | None = None):
    """Where the BM1684 INT8 1x1 Conv producing ``t`` sits *exactly* on a rounding tie, computed independently of
    qsens's kernels: the int64 accumulator ``sum_c x*w8 + b16`` (``x_codes``: the conv's input codes, NCHW) has
    remainder ``2^(r-1)`` modulo ``2^r``, so ``RightShiftRound(acc, r, HALF_UP)`` rounds an exact .5 up.

    At such a tie the code is decided by nothing but the rounding of an exact half; qsens rounds it up, as the
    interpreter's HALF_UP does.  TPU-MLIR's recorded codes there depend on the CPU the fixture was recorded on
    (Lite0's head conv, image 1, channel 1226: 3408 = 106.5 * 2^5; the fixture says 106, TPU-MLIR 1.23 rerun on an
    AMD EPYC with the same model, table and inputs says 107, as qsens) -- see :func:`assert_codes_equal_but_ties`.
    Returns a bool array shaped like the conv's output (N, O, H, W)."""
    from qsens.quant.mixed import host_qparams, thresholds_from_table
    from qsens.tables import read_cali_table

    g = model.graph
    op = g.producer(t)
    assert op.type == "Conv" and tuple(op.attr("kernel_shape")) == (1, 1) and int(op.attr("group", 1)) == 1, t
    assert tuple(op.attr("strides", (1, 1))) == (1, 1) and not any(op.attr("pads", (0, 0, 0, 0))), t
    th = thresholds_from_table(g, read_cali_table(table_path or fx.file("cali_table")))
    eff = np.asarray(plan.effective(th))
    idx = {name: i for i, name in enumerate(g.tensors)}
    weights = {r: params[k] for r, k in op.weights}
    qp = host_qparams(plan, op, weights, [float(eff[idx[op.inputs[0]]])], float(eff[idx[t]]))
    w8 = np.asarray(qp["w8"]).astype(np.int64)[:, :, 0, 0]
    acc = np.einsum("nchw,oc->nohw", x_codes.astype(np.int64), w8) + np.asarray(qp["b16"]).astype(np.int64)[None, :, None, None]
    r = int(np.asarray(qp["r"]))
    if r <= 0:
        return np.zeros(acc.shape, bool)
    return (acc & ((1 << r) - 1)) == (1 << (r - 1))


def assert_codes_equal_but_ties(ours: np.ndarray, theirs: np.ndarray, ties: np.ndarray, err_msg: str = "") -> int:
    """``ours == theirs`` bit for bit except, at most, one code apart exactly where ``ties`` holds (see
    :func:`conv_tie_mask`) with qsens's code the half-up one.  Returns the number of such tie flips."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    ties = np.asarray(ties).reshape(ours.shape)
    off = ours != theirs
    np.testing.assert_array_equal(np.where(ties, 0, ours), np.where(ties, 0, theirs), err_msg=err_msg)
    assert (np.abs(ours - theirs)[off] == 1).all() and (ours[off] == theirs[off] + 1).all(), err_msg
    return int(off.sum())
