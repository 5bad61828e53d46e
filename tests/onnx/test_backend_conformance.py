"""ONNX backend node suite (onnx.backend.test, from the installed onnx) against qsens.onnx.backend.

Include patterns come from the op registry (``tests/onnx/suite.py``); known gaps are ``xfail`` with a
reason, never excluded.  ``test_node_suite_passed_floor`` runs the included node cases programmatically and
fails if the number that execute and pass drops below ``FLOOR`` (a broken include list cannot pass quietly).
"""

from __future__ import annotations

import collections

import onnx.backend.test

from qsens.onnx.backend import QsensBackend
from tests.onnx import suite

FLOOR = 730  # executed-and-passed node cases (732 with onnx 1.23.2); raise it when coverage grows

backend_test = onnx.backend.test.BackendTest(QsensBackend, __name__)
for _op, _pattern in suite.include_patterns().items():
    backend_test.include(_pattern)
for _pattern in suite.XFAIL:
    backend_test.xfail(_pattern)

globals().update(backend_test.test_cases)


def test_node_suite_passed_floor():
    table = suite.run_node_suite()
    total = sum(table.values(), collections.Counter())
    assert total["passed"] >= FLOOR, f"only {total['passed']} node cases passed (floor {FLOOR}): {dict(total)}"
    assert total["failed"] == 0 and total["xpassed"] == 0, {op: dict(c) for op, c in table.items() if c["failed"] or c["xpassed"]}
