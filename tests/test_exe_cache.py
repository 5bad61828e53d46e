"""qsens's persistent executables (``qsens/exe_cache.py``): loaded instead of traced, bit-identical, robust to bad
files, never a copy of an executable JAX itself loaded from its cache (those serialize without their kernels)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qsens import exe_cache

REPO = Path(__file__).resolve().parents[1]


def _f(x, s, *, n):
    return jnp.tanh(jnp.transpose(x, (0, 2, 1)) * s)[:, ::n] + jnp.float32(1)


@pytest.fixture
def cache_dir(tmp_path):
    exe_cache.enable(tmp_path)
    yield tmp_path / "qsens_exe"
    exe_cache.disable()


def _fresh(shape):
    """Random input and a function whose compiled module no earlier run can have made: a random constant is part
    of it.  JAX's persistent cache, shared by every run on a machine, cannot hold its executable; once a process has
    used that cache, JAX keeps reading it (the switch qsens compiles under is not consulted again), and an executable
    read from it serializes without its kernels, so qsens would (correctly) keep no file for it.  A shape taken from
    the test's folder name was not enough: that name is the same in every run, and CI's machine keeps its cache."""
    c = np.float32(1 + uuid.uuid4().int % 2**20 / 2**21)

    def f(x, s, *, n):
        return _f(x, s, n=n) * c

    return jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32), f


def test_second_object_loads_the_executable_and_gets_the_same_bits(cache_dir, tmp_path):
    x, f = _fresh((3, 4, 6))
    a = exe_cache.PersistentJit(("t", 1), f, ("n",))
    ya = np.asarray(a(x, np.float32(0.7), n=2))
    assert (a.written, a.loaded) == (1, 0) and len(list(cache_dir.glob("*.exe"))) == 1
    b = exe_cache.PersistentJit(("t", 1), f, ("n",))
    yb = np.asarray(b(x, np.float32(0.7), n=2))
    assert (b.written, b.loaded) == (0, 1)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ya, np.asarray(jax.jit(f, static_argnames="n")(x, np.float32(0.7), n=2)))
    # another static value, another shape or another key: other files
    b(x, np.float32(0.7), n=3)
    b(x[:2], np.float32(0.7), n=2)
    exe_cache.PersistentJit(("t", 2), f, ("n",))(x, np.float32(0.7), n=2)
    assert len(list(cache_dir.glob("*.exe"))) == 4


def test_a_loaded_executable_runs_once_on_its_first_call(cache_dir, tmp_path, monkeypatch):
    """The run that checks a loaded file is the first call's result (it used to run twice)."""
    from jax.experimental import serialize_executable as se

    x, f = _fresh((2, 5, 3))
    exe_cache.PersistentJit(("once", 1), f, ("n",))(x, np.float32(0.5), n=1)
    runs = []
    orig = se.deserialize_and_load

    def counted(*a, **k):
        c = orig(*a, **k)

        def run(*args):
            runs.append(1)
            return c(*args)

        return run

    monkeypatch.setattr(se, "deserialize_and_load", counted)
    b = exe_cache.PersistentJit(("once", 1), f, ("n",))
    y1 = np.asarray(b(x, np.float32(0.5), n=1))
    assert b.loaded == 1 and len(runs) == 1
    y2 = np.asarray(b(x, np.float32(0.5), n=1))
    assert len(runs) == 2
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, np.asarray(f(x, np.float32(0.5), n=1)))


def test_a_corrupt_file_is_compiled_again(cache_dir, tmp_path):
    x, f = _fresh((2, 3, 4))
    exe_cache.PersistentJit(("c", 1), f, ("n",))(x, np.float32(1), n=1)
    (exe_file,) = cache_dir.glob("*.exe")
    exe_file.write_bytes(b"not an executable")
    c = exe_cache.PersistentJit(("c", 1), f, ("n",))
    np.testing.assert_array_equal(np.asarray(c(x, np.float32(1), n=1)), np.asarray(f(x, np.float32(1), n=1)))
    assert (c.loaded, c.written) == (0, 1) and exe_file.read_bytes() != b"not an executable"


def test_prune_deletes_the_oldest_first(tmp_path):
    for k in range(5):
        f = tmp_path / f"e{k}.exe"
        f.write_bytes(b"x" * 1000)
        os.utime(f, (1000 + k, 1000 + k))
    (tmp_path / "other.txt").write_bytes(b"y" * 5000)  # not an executable: never touched
    assert exe_cache.prune(tmp_path, 2500) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e3.exe", "e4.exe", "other.txt"]
    assert exe_cache.prune(tmp_path, 2500) == 0


def test_unstable_keys_and_no_cache_are_plain_jit(cache_dir):
    x = jnp.ones((2, 3, 4), jnp.float32)
    assert exe_cache.stable_text(("op", object())) is None
    assert exe_cache.stable_text(("op", np.arange(2000))) is None  # NumPy elides values: incomplete
    assert exe_cache.stable_text(("op", (1, 2.5, "Conv"))) == "('op', (1, 2.5, 'Conv'))"
    u = exe_cache.PersistentJit(("op", object()), _f, ("n",))
    u(x, np.float32(1), n=1)
    assert u.written == 0 and not list(cache_dir.glob("*.exe"))
    exe_cache.disable()
    p = exe_cache.PersistentJit(("p", 1), _f, ("n",))
    p(x, np.float32(1), n=1)
    assert p.written == 0 and not list(cache_dir.glob("*.exe"))


_TWO_PROCESSES = """
import sys
import jax, jax.numpy as jnp, numpy as np
from qsens import exe_cache
from qsens.engine import enable_compilation_cache

enable_compilation_cache(sys.argv[1])  # JAX's persistent cache and qsens's, in one folder

def f(x):
    return (jnp.transpose(x, (0, 2, 1)) * 2.0)[:, ::2] + 1.0

x = jnp.arange(2 * 3 * 8, dtype=jnp.float32).reshape(2, 3, 8)
if sys.argv[2] == "first":
    jax.block_until_ready(jax.jit(f)(x))  # fills JAX's cache with this very module
    jax.clear_caches()
p = exe_cache.PersistentJit(("two", 1), f)
y = np.asarray(p(x))
print(p.written, p.loaded, float(y.sum()))
"""


def test_an_executable_jax_loaded_from_its_cache_is_not_what_qsens_keeps(tmp_path):
    """XLA-CPU serializes an executable it read from JAX's cache without its fused kernels (the copy fails when it
    runs: 'Function ..._fusion not found'); qsens compiles afresh for its own file, so the next process runs it."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("QSENS_EXE_CACHE", None)
    out = []
    for step in ("first", "second"):
        r = subprocess.run([sys.executable, "-c", _TWO_PROCESSES, str(tmp_path / "jc"), step], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out.append(r.stdout.split())
    want = float(((np.arange(48, dtype=np.float32).reshape(2, 3, 8).transpose(0, 2, 1) * 2)[:, ::2] + 1).sum())
    assert out[0] == ["1", "0", repr(want)] and out[1] == ["0", "1", repr(want)]


def test_merged_1x1_filters_are_kept_and_bit_identical(cache_dir):
    """The canonicalizer's merged 1x1 filters (a float32 sum over d ascending) are kept beside the executables:
    the same bits with the cache off, loaded the second time, recomputed from a bad or foreign file."""
    from qsens.onnx import canonical

    rng = np.random.default_rng(0)
    w2f = rng.standard_normal((6, 5, 9)).astype(np.float32)
    w1m = rng.standard_normal((5, 7)).astype(np.float32)
    want = np.zeros((6, 7, 9), np.float32)
    for d in range(5):  # the plain loop, written out here
        want = want + w2f[:, d, None, :] * w1m[d, None, :, None]
    got = canonical._merged_filter(w2f, w1m)
    (blob,) = cache_dir.glob("*.npy")
    assert got.tobytes() == want.tobytes() and np.load(blob).tobytes() == want.tobytes()
    np.save(blob, np.full((6, 7, 9), 3.0, np.float32))  # a file under that key is what a second call uses
    assert (canonical._merged_filter(w2f, w1m) == 3.0).all()
    np.save(blob, np.zeros((2, 2), np.float32))  # wrong shape: recomputed and rewritten
    assert canonical._merged_filter(w2f, w1m).tobytes() == want.tobytes()
    assert np.load(blob).tobytes() == want.tobytes()
    blob.write_bytes(b"not an array")
    assert canonical._merged_filter(w2f, w1m).tobytes() == want.tobytes()
    w1m2 = w1m.copy()
    w1m2[0, 0] = np.nextafter(w1m2[0, 0], np.float32(9))  # one ulp of one operand: another key
    canonical._merged_filter(w2f, w1m2)
    assert len(list(cache_dir.glob("*.npy"))) == 2
    exe_cache.disable()
    assert canonical._merged_filter(w2f, w1m).tobytes() == want.tobytes()


def _conv_model(path, shape_const):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.asarray(shape_const, np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, shape])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return str(path)


def test_shape_inferences_are_kept_and_give_the_same_graph(cache_dir, tmp_path, monkeypatch):
    """The canonicalizer's shape inferences (one jax.eval_shape trace per op signature) are kept beside the
    executables: a second process's build (here: the in-process memo emptied) traces none and builds the same
    graph; a bad note is traced again; another constant is another key; nothing is kept with the cache off."""
    from qsens.onnx import canonical, to_jax

    traced = []
    eval_shape = canonical.Canonicalizer._eval_shape
    monkeypatch.setattr(canonical.Canonicalizer, "_eval_shape",
                        staticmethod(lambda *a: traced.append(a[-1]) or eval_shape(*a)))

    def build(path):
        canonical._INFER_MEMO.clear()
        traced.clear()
        fn, _ = to_jax(path)
        return fn.model.graph

    m = _conv_model(tmp_path / "m.onnx", [1, -1])
    g1 = build(m)
    assert traced and len(list(cache_dir.glob("*.json"))) == len(traced)
    assert [op.out_shapes for op in g1.ops if op.type != "Input"][-1] == ((1, 256),)
    g2 = build(m)
    assert traced == [] and g2.ops == g1.ops
    for note in cache_dir.glob("*.json"):
        note.write_text("not json")
    assert build(m).ops == g1.ops and traced  # traced again, and kept again
    assert build(m).ops == g1.ops and traced == []
    g3 = build(_conv_model(tmp_path / "m2.onnx", [4, -1]))  # the Reshape's constant differs: its own note
    assert traced == ["Reshape"] and [op.out_shapes for op in g3.ops][-1] == ((4, 64),)
    exe_cache.disable()
    n = len(list(cache_dir.glob("*.json")))
    assert build(m).ops == g1.ops and traced and len(list(cache_dir.glob("*.json"))) == n
