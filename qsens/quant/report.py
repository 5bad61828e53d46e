"""``qsens ops MODEL --int8-report``: every canonical op's precision in TPU-MLIR's BM1684 INT8 model, and for the
F32 ones the reason and the TPU-MLIR source of the rule (file under ``sophgo/tpu-mlir``; versions and the checks
against the real TPU-MLIR 1.23 are in docs/bm1684.md).

Static: decided from the graph alone.  Threshold-dependent fallbacks (Conv/Deconv ``rshift < 0``, Add with a
negative multiplier, Mul with a multiplier outside [0, 127]) are listed as ``INT8*`` with the condition.
"""

from __future__ import annotations

from ..onnx.ir import Graph
from .chip import as_chip
from .mixed import FOLLOWS_INPUT_TYPE, make_plan
from .qparams import F32_ON_BM1684, op_kind

#: TPU-MLIR source of each F32 rule (lib/Conversion/TopToTpu/BM1684/*.cpp unless said otherwise)
F32_SOURCE = {
    "Interp": "lib/Conversion/TopToTpu/BM1684/Interp.cpp (1.23 lowers it to F32: tests/fixtures/tpu_mlir/fpn)",
    "Clip": "lib/Conversion/TopToTpu/BM1684/Clip.cpp (MaxConst + MinConst in F32: tests/fixtures/tpu_mlir/gen_const)",
    "Div": "lib/Conversion/TopToTpu/BM1684/Div.cpp (LoweringINT8 = lowering_common_f32: gen_const)",
    "Reduce": "lib/Conversion/TopToTpu/BM1684/Reduce.cpp (LoweringINT8 calls LoweringF32)",
}
_BY_REASON = (
    ("conv stride", "lib/Conversion/TopToTpu/BM1684/Conv.cpp (stride > 15)"),
    ("only 2-D conv", "lib/Conversion/TopToTpu/BM1684/Conv.cpp (2-D only)"),
    ("pool kernel area", "lib/Conversion/TopToTpu/BM1684/{AvgPool,MaxPool}.cpp (kernel area > 225: mbv3s)"),
    ("MatMul", "lib/Conversion/TopToTpu/BM1684/MatMul.cpp (INT8 only for a plain FC with a weight right operand)"),
    ("Concat with a constant", "lib/Conversion/TopToTpu/BM1684/Concat.cpp (a weight input: F32; gen_wconst)"),
)
QSENS_GAP = "qsens: not reproduced (F32 here; TPU-MLIR's BM1684 lowering of it is not modelled)"
DYNAMIC = {
    "Conv": "F32 if rshift < 0 (BM1684/Conv.cpp)",
    "Deconv": "F32 if rshift < 0 (BM1684/Deconv.cpp)",
    "Add": "F32 if a multiplier is negative (BM1684/Add.cpp)",
    "Mul": "F32 if the multiplier is outside [0, 127] (BM1684/Mul.cpp)",
}


def f32_source(op, reason: str) -> str:
    kind = op_kind(op)
    if "qsens does not model" in reason:
        return "qsens: not reproduced (F32 here; TPU-MLIR's BM1684X lowering of it is not modelled: docs/bm1684x.md)"
    if kind in F32_ON_BM1684:
        return F32_SOURCE.get(kind, "lib/Conversion/TopToTpu/BM1684")
    for key, src in _BY_REASON:
        if key in reason:
            return src
    return QSENS_GAP


def int8_report(graph: Graph, chip=None) -> list[dict]:
    """One row per op: ``{"index", "name", "type", "precision", "reason", "source"}``; precision is ``INT8``,
    ``INT8*`` (threshold-dependent fallback, reason says when), ``F32``, ``as input`` (Reshape-like ops take their
    input's type) or ``input``.  ``chip``: a ChipSpec or name (default BM1684; BM1684X has no threshold-dependent
    fallbacks, and lists the ops whose BM1684X lowering qsens does not model)."""
    spec = as_chip(chip)
    plan = make_plan(graph, chip=spec)
    rows = []
    for i, op in enumerate(graph.ops):
        row = {"index": i, "name": op.name, "type": op.type, "precision": "INT8", "reason": "", "source": ""}
        if op.type == "Input":
            row["precision"] = "input"
        elif op.name in plan.f32_reason:
            why = plan.f32_reason[op.name]
            row.update(precision="F32", reason=why, source=f32_source(op, why))
        elif op.type in FOLLOWS_INPUT_TYPE:
            row.update(precision="as input", reason="lowered with its input's type (top.Reshape)")
        elif op_kind(op) in DYNAMIC and spec.name == "BM1684":
            row.update(precision="INT8*", reason=DYNAMIC[op_kind(op)])
        rows.append(row)
    return rows


def format_report(rows: list[dict], chip=None) -> str:
    n = {p: sum(r["precision"] == p for r in rows) for p in ("INT8", "INT8*", "F32", "as input")}
    lines = [f"# {as_chip(chip).name} INT8 model: {n['INT8'] + n['INT8*']} INT8 ops ({n['INT8*']} with a threshold-dependent F32 "
             f"fallback), {n['F32']} F32, {n['as input']} reshapes"]
    lines.append(f"{'idx':>4}  {'name':<48} {'type':<12} {'precision':<9} reason / TPU-MLIR source")
    for r in rows:
        tail = r["reason"] + (f"  [{r['source']}]" if r["source"] else "")
        lines.append(f"{r['index']:>4}  {r['name']:<48} {r['type']:<12} {r['precision']:<9} {tail}".rstrip())
    return "\n".join(lines)
