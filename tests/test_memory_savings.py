"""What a memory budget changes must not change a result: 8-bit inference images (PixelBatch), the ONNX initializers
released after conversion, the bounded memo of INT8 parameters.  Each is checked against the byte-identical golden
outputs of tests/test_search_golden.py, or against the float path value for value."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import search_models as sm
    from cli_util import normalize_outputs
    from test_search_golden import EPOCH, ZOO, check, run_case
except ImportError:
    from tests import search_models as sm
    from tests.cli_util import normalize_outputs
    from tests.test_search_golden import EPOCH, ZOO, check, run_case

from qsens.data.preprocess import PixelBatch, Preprocess, load_batch
from qsens.errors import ModelError


@pytest.mark.parametrize("channel_format", ["nchw", "nhwc"])
@pytest.mark.parametrize("pixel_format", ["rgb", "bgr", "gray"])
def test_pixel_batch_equals_the_float_batch(tmp_path, channel_format, pixel_format):
    files = sorted(str(p) for p in Path(sm.png_dataset(tmp_path / "img", n=5, hw=20, seed=3)).iterdir())
    c = 1 if pixel_format == "gray" else 3
    pp = Preprocess(resize_dims=(24, 24), keep_aspect_ratio=False, net_hw=(20, 20), pixel_format=pixel_format, channel_format=channel_format,
                    mean=(127.0, 101.5, 33.0)[:c], scale=(0.0078125, 0.017, 1 / 255)[:c])
    want = load_batch(files, pp)
    got = load_batch(files, pp, compact=True)
    assert isinstance(got, PixelBatch)
    assert got.shape == want.shape and got.dtype == want.dtype and len(got) == 5 and got.ndim == 4
    assert got.nbytes * 4 == want.nbytes  # a quarter of the memory
    x = np.asarray(got)
    assert x.dtype == np.float32 and np.array_equal(x.view(np.uint32), want.view(np.uint32))  # bit for bit
    part = got[1:4]
    assert isinstance(part, PixelBatch) and np.shares_memory(part.pixels, got.pixels)
    assert np.array_equal(np.asarray(part), want[1:4])
    assert np.array_equal(got[2], want[2])


def test_pixel_batch_only_for_8_bit_pixels(tmp_path, monkeypatch):
    """Pixels that are not uint8 (a decoder giving floats) keep the float array, with the same values."""
    import qsens.data.preprocess as pre

    files = sorted(str(p) for p in Path(sm.png_dataset(tmp_path / "img", n=2, hw=8, seed=4)).iterdir())
    pp = Preprocess(resize_dims=(8, 8), keep_aspect_ratio=False, net_hw=(8, 8))
    orig = pre.load_pixels
    monkeypatch.setattr(pre, "load_pixels", lambda f, q: orig(f, q).astype(np.float32) + 0.5)
    got = load_batch(files, pp, compact=True)
    assert isinstance(got, np.ndarray) and np.array_equal(got, load_batch(files, pp))


@pytest.mark.zoo
def test_pnet_byte_identical_under_a_memory_budget(zoo, tmp_path):
    """The golden PNet search with --max_memory 1M (8-bit images, every prefix recomputed, large blocks mmap-ed) in a
    fresh process (the budget is process-wide): the same files as without one."""
    model = str(ZOO / "mtcnn_pnet.onnx")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "qsens", "search", model, "--dataset", str(ZOO / "images100"), "--input_num", "40",
            "--inference_num", "10", "--expected_cos", "0.9999", "--max_float_layers", "3", "--input_shapes",
            "[[1,3,48,48]]", "--max_memory", "1M", "--out_dir", str(out), "-q"]
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    env.pop("QSENS_DEBUG", None)
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    check("pnet", normalize_outputs(out, model))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # the golden tiny case's model and data (tests/test_search_golden.py)
    d = tmp_path_factory.mktemp("golden_mem")
    model = sm.save(sm.resnet_ish(blocks=3, hw=12, seed=5), d / "net.onnx")
    data = sm.npy_dataset(d / "data", n=10, shape=(1, 3, 12, 12), seed=1)
    return model, data


def _tiny_argv(tiny):
    model, data = tiny
    return ["search", model, "--dataset", data, "--input_num", "8", "--inference_num", "4", "--tune_num", "1",
            "--expected_cos", "1.0"]


def test_released_initializers_and_a_one_entry_qparams_memo_keep_the_golden_outputs(tiny, tmp_path, monkeypatch):
    """Every model releases its initializers (graphs at other batches re-read the file) and the INT8-parameter memo
    keeps one entry: the golden tiny search is unchanged."""
    import qsens.onnx.canonical as canonical
    import qsens.search.problem as problem

    monkeypatch.setattr(canonical, "RELEASE_BYTES", 0)
    monkeypatch.setattr(problem, "QP_CACHE_BYTES", 0)
    built = []
    orig = canonical.Canonicalizer._build
    monkeypatch.setattr(canonical.Canonicalizer, "_build",
                        lambda self, *a, **k: (built.append((self._reload is not None, a[1])), orig(self, *a, **k))[1])
    check("tiny_fast", run_case(tmp_path, _tiny_argv(tiny), tiny[0]))
    assert (True, 4) in built  # a graph at another batch was built from the re-read initializers


def test_released_model_equals_the_in_memory_one_and_notices_a_changed_file(tmp_path, monkeypatch):
    import onnx

    import qsens.onnx.canonical as canonical
    from qsens.onnx import to_jax

    monkeypatch.setattr(canonical, "RELEASE_BYTES", 0)
    path = sm.save(sm.resnet_ish(blocks=2, hw=12, seed=9), tmp_path / "net.onnx")
    fn, params = to_jax(path)
    ref, ref_params = to_jax(onnx.load(path))  # a ModelProto is the caller's: never released
    assert fn.model.canon._reload is not None and ref.model.canon._reload is None
    assert len(fn.model.canon.model.graph.initializer) == 0
    assert sorted(params) == sorted(ref_params)
    assert all(np.array_equal(np.asarray(params[k]), np.asarray(ref_params[k])) for k in params)
    g, h = fn.model.graph_at(3), ref.model.graph_at(3)
    assert [dataclasses.astuple(o) for o in g.ops] == [dataclasses.astuple(o) for o in h.ops]
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    a, b = fn(params, x), ref(ref_params, x)
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    time.sleep(0.01)
    Path(path).write_bytes(Path(path).read_bytes() + b"")  # rewritten: a new modification time
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ModelError, match=r"net.onnx' changed while qsens was using it; rerun with the new file"):
        fn.model.graph_at(5)


def test_search_chunk_is_sized_from_the_command(monkeypatch):
    """``--batch`` wins; under ``--max_memory`` the default 10; else the images in as few equal chunks of at most 32
    as possible (30 -> one of 30, 100 -> four of 25, two devices -> half each, 10 or fewer -> 10), whatever the
    free memory."""
    from types import SimpleNamespace

    from qsens.search import memory

    monkeypatch.setattr(memory, "_budget", [None])
    assert memory.search_chunk(30, 7) == 7
    assert memory.search_chunk(30) == 30
    assert memory.search_chunk(100) == 25
    assert memory.search_chunk(300) == 30
    assert memory.search_chunk(33) == 17
    assert memory.search_chunk(5) == 10  # Problem caps a chunk at the images it has
    assert memory.search_chunk(30, placement=SimpleNamespace(n=2)) == 15
    monkeypatch.setattr(memory, "host_available", lambda: 1)  # no say in it
    assert memory.search_chunk(30) == 30
    monkeypatch.setattr(memory, "_budget", [10**12])  # --max_memory: memory first, whatever it allows
    assert memory.search_chunk(30) == 10
