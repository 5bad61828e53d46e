"""The ONNX backend node suite as qsens runs it: include patterns from the registry, known gaps (xfail).

Shared by ``test_backend_conformance.py`` (pytest), the executed-count floor test and
``gen_ops_table.py`` (which writes docs/ops.md).
"""

from __future__ import annotations

import collections
import re
import traceback
import unittest
import warnings

from qsens.onnx import registry

# ONNX op type -> regex (after ``^test_``) naming its node cases, where the suite does not use snake_case
# of the op type.  Negative lookaheads keep other ops' cases out (GatherElements, ReduceSumSquare, ...).
SUITE_NAME = {
    "ArgMax": "argmax",
    "ArgMin": "argmin",
    "CastLike": "castlike",
    "AveragePool": "averagepool",
    "BatchNormalization": "batchnorm",
    "ConstantOfShape": "constantofshape",
    "Conv": "conv",
    "ConvTranspose": "convtranspose",
    "DepthToSpace": "depthtospace",
    "EyeLike": "eyelike",
    "Gather": "gather(?!_elements)",
    "GlobalAveragePool": "globalaveragepool",
    "GlobalMaxPool": "globalmaxpool",
    "Greater": "greater(?!_equal)",
    "HardSigmoid": "hardsigmoid",
    "HardSwish": "hardswish",
    "InstanceNormalization": "instancenorm",
    "LRN": "lrn",
    "LayerNormalization": "layer_normalization",
    "LeakyRelu": "leakyrelu",
    "LogSoftmax": "logsoftmax",
    "Less": "less(?!_equal)",
    "MatMul": "matmul",
    "MaxPool": "maxpool",
    "PRelu": "prelu",
    "Pad": "(constant|edge|reflect|wrap)_pad",
    "ReduceSum": "reduce_sum(?!_square)",
    "Split": "split(?!_to_sequence)",
    "SpaceToDepth": "spacetodepth",
}


def snake(op: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", op).lower()


def op_pattern(op: str) -> str:
    return rf"^test_({SUITE_NAME.get(op, snake(op))})(_|$)"


def include_patterns() -> dict[str, str]:
    return {op: op_pattern(op) for op in registry.supported_ops()}


# Known gaps: regex (matched with re.search on the case name) -> reason.  xfail, never exclude.
# Patterns match both the case name and the runner's ``<case>_cpu`` test name.
XFAIL: dict[str, str] = {
    # MaxPool's optional Indices output is not implemented (inference models never read it).
    r"^test_maxpool_with_argmax_": "MaxPool Indices output not supported",
    # Training-mode BatchNormalization (running mean/var outputs): qsens is inference-only.
    r"^test_batchnorm_.*_training_mode": "training-mode BatchNormalization not supported",
    # Casts *to* float8 / e8m0 / signed 4-bit / 2-bit types: no JAX/numpy dtype with ONNX's saturation semantics
    # (unsigned 4-bit / 2-bit: below, for ml_dtypes < 0.7 only).
    r"^test_cast(like)?_(e8m0_)?FLOAT(16)?_to_(FLOAT8E[45]M[23](FNUZ|FN)?|FLOAT8E8M0|INT[24])(_expanded)?(_cpu)?$": "cast to float8/int4/int2",
    # The canonicalizer removes Dropout and with it the optional mask output (canonical.py).
    r"^test_dropout_default_mask": "Dropout mask output dropped by the canonicalizer",
    # Strings, sequences and optionals are not tensor types qsens handles.
    r"^test_equal_string": "string tensors not supported",
    r"^test_identity_(sequence|opt)": "sequence/optional types not supported",
    # The expanded (function-body) Range uses Loop, which qsens does not implement.
    r"^test_range_.*_expanded": "Loop not supported (Range function body)",
}




def _ml_dtypes_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(x) for x in re.findall(r"\d+", version("ml_dtypes"))[:2])


# ml_dtypes 0.7 casts float -> uint4 / uint2 as ONNX does (CI's fresh install took 0.7.0 on 2026-12-01 and these
# eight cases passed); with older versions they fail
if _ml_dtypes_version() < (0, 7):
    XFAIL[r"^test_cast(like)?_FLOAT(16)?_to_UINT[24](_expanded)?(_cpu)?$"] = "cast to uint4/uint2 (ml_dtypes < 0.7)"


def case_op(name: str, patterns: dict[str, str] | None = None) -> str | None:
    patterns = patterns or include_patterns()
    for op, p in patterns.items():
        if re.search(p, name):
            return op
    return None


def xfail_reason(name: str) -> str | None:
    for p, why in XFAIL.items():
        if re.search(p, name):
            return why
    return None


def node_cases():
    """The suite's node cases (generated in memory by onnx; numpy warnings while generating are expected)."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model_tests(kind="node")


def run_case(case) -> tuple[str, str]:
    """Run one node case like ``onnx.backend.test.runner``: ('passed'|'failed'|'skipped', detail)."""
    from onnx.backend.test.runner import Runner, _normalize_tensor

    from qsens.onnx.backend import QsensBackend

    try:
        rep = QsensBackend.prepare(case.model, "CPU")
        for inputs, ref_outputs in case.data_sets:
            outs = rep.run([_normalize_tensor(x) for x in inputs])
            Runner.assert_similar_outputs(
                [_normalize_tensor(x) for x in ref_outputs], list(outs), rtol=case.rtol, atol=case.atol,
                model_dir=None,
            )
    except unittest.SkipTest as e:
        return "skipped", str(e)
    except Exception as e:  # noqa: BLE001
        return "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300] + (
            "" if str(e) else traceback.format_exc(limit=-1)
        )
    return "passed", ""


def run_node_suite() -> dict[str, collections.Counter]:
    """op -> Counter(passed / xfailed / failed / xpassed / skipped) over the included node cases."""
    pats = include_patterns()
    table: dict[str, collections.Counter] = {op: collections.Counter() for op in pats}
    for case in node_cases():
        op = case_op(case.name, pats)
        if op is None:
            continue
        status, _ = run_case(case)
        if xfail_reason(case.name):
            status = {"failed": "xfailed", "passed": "xpassed"}.get(status, status)
        table[op][status] += 1
    return table
