"""The top-level API: ``qsens.to_jax`` is loaded lazily, so ``import qsens`` does not import JAX (the malloc
policy in qsens/hostmem.py must be set before XLA starts its threads)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import helper

from tests.onnx_builders import init, make_model, vi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import sys, warnings
warnings.simplefilter("error", RuntimeWarning)  # hostmem warns so when qsens comes after JAX started
import numpy as np
import qsens
assert "jax" not in sys.modules, "import qsens imported jax"
assert "qsens.onnx" not in sys.modules, "import qsens imported qsens.onnx"
assert "to_jax" in qsens.__all__ and "to_jax" in dir(qsens), (qsens.__all__, dir(qsens))
fn, params = qsens.to_jax(sys.argv[1], [[2, 4]])
assert "jax" in sys.modules
from qsens import to_jax
import qsens.onnx
assert to_jax is qsens.to_jax is qsens.onnx.to_jax
import jax
y = np.asarray(jax.jit(fn)(params, {"x": np.arange(8, dtype=np.float32).reshape(2, 4)})["y"])
np.testing.assert_allclose(y, 2 * np.arange(8, dtype=np.float32).reshape(2, 4) + 1)
print("ok")
"""


def _tiny_model(path):
    nodes = [helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Add", ["m", "one"], ["y"])]
    m = make_model(nodes, [vi("x", ["N", 4])], [vi("y", ["N", 4])],
                   [init("two", np.asarray(2.0, np.float32)), init("one", np.asarray(1.0, np.float32))])
    onnx.save(m, path)


def test_import_qsens_does_not_import_jax_and_to_jax_works(tmp_path):
    path = str(tmp_path / "tiny.onnx")
    _tiny_model(path)
    env = {k: v for k, v in os.environ.items() if k != "QSENS_MALLOC"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_unknown_attribute_is_an_attribute_error():
    import qsens

    try:
        qsens.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("qsens.no_such_name did not raise AttributeError")
    assert not hasattr(qsens, "also_missing")
