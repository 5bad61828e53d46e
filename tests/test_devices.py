"""Scale: images sharded over devices (``--devices``), two processes (``jax.distributed``), the memory planner.

JAX fixes its device count when it starts, so the sharded runs are subprocesses with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (CPU devices; CI has no GPU).  Every comparison is with the
one-device run of the same search: losses, chosen methods, thresholds and float layers are required to be
identical (they are bit-identical: each device runs the one-device program on its own images).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import search_models as sm
    from cli_util import normalize_outputs, run_cli, sub_env
except ImportError:  # pragma: no cover
    from tests import search_models as sm
    from tests.cli_util import normalize_outputs, run_cli, sub_env

from qsens import devices
from qsens.errors import QsensError
from qsens.onnx import to_jax
from qsens.search import memory

REPO = Path(__file__).resolve().parents[1]


def forced_env(n: int) -> dict:
    env = sub_env()
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------------------------ sharded == one
@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    d = tmp_path_factory.mktemp("devices")
    r = subprocess.run([sys.executable, str(REPO / "tests" / "devices_worker.py"), str(d)], env=forced_env(4),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_worker_saw_four_devices_and_sharded_its_batches(worker):
    assert worker["n_devices"] == 4
    runs = worker["runs"]
    assert runs["1dev"]["placement"] == "1 device" and "SingleDeviceSharding" in runs["1dev"]["sharding"]
    assert runs["2dev"]["placement"] == "2 cpu devices" and "'data': 2" in runs["2dev"]["sharding"]
    assert runs["4dev"]["placement"] == "4 cpu devices" and "'data': 4" in runs["4dev"]["sharding"]
    # 11 images, 3 per device: 4 chunks of 3 / 2 chunks of 6 / 1 chunk of 12 (padding on every mesh)
    assert [(runs[k]["chunk"], runs[k]["n_chunks"]) for k in ("1dev", "2dev", "4dev")] == [(3, 4), (6, 2), (12, 1)]


@pytest.mark.parametrize("label", ["2dev", "4dev", "1dev_nocache", "2dev_halfcache"])
def test_sharded_and_uncached_searches_equal_one_device(worker, label):
    one, other = worker["runs"]["1dev"], worker["runs"][label]
    assert len(one["losses"]) == 11 and len({round(x, 9) for row in one["losses"] for x in row}) > 5
    np.testing.assert_allclose(other["losses"], one["losses"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(other["loo"], one["loo"], rtol=0, atol=1e-6)
    assert other["best"] == one["best"]
    assert other["new_thresholds"] == one["new_thresholds"]
    assert other["float_layers"] == one["float_layers"] and len(one["float_layers"]) == 5
    assert other["all_int8"] == pytest.approx(one["all_int8"], abs=1e-7)
    # bit-identical in fact: every device runs the one-device program on its own images
    assert other["losses"] == one["losses"] and other["loo"] == one["loo"]


def test_memory_planner_resident_chunks(worker):
    runs = worker["runs"]
    assert runs["1dev"]["resident"] == 4  # half of the host's memory holds everything
    assert runs["1dev_nocache"]["resident"] == 0  # --max_memory 0: every prefix recomputed
    assert runs["2dev_halfcache"]["resident"] == 1  # room for one chunk of 6 images


# ------------------------------------------------------------------------------------------------ 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp")
    model = sm.save(sm.resnet_ish(blocks=2, hw=12, seed=7), d / "net.onnx")
    data = sm.npy_dataset(d / "data", n=10, shape=(1, 3, 12, 12), seed=2)
    return {"dir": d, "model": model, "data": data}


def _argv(cm, out, *extra):
    return [sys.executable, "-m", "qsens", "search", cm["model"], "--dataset", cm["data"], "--input_num", "8",
            "--inference_num", "6", "--tune_num", "1", "--batch", "2", "--expected_cos", "1.0", "--out_dir", str(out),
            "-q", *extra]


def test_two_processes_equal_one_process(cli_model, tmp_path):
    env1 = forced_env(1)
    env1["SOURCE_DATE_EPOCH"] = "1700000000"
    one = tmp_path / "one"
    r = subprocess.run(_argv(cli_model, one), env=env1, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    port = _free_port()
    env2 = forced_env(2)
    env2["SOURCE_DATE_EPOCH"] = "1700000000"
    procs = [subprocess.Popen(_argv(cli_model, two, "--devices", "all", "--coordinator_address", f"127.0.0.1:{port}",
                                    "--num_processes", "2", "--process_id", str(k)),
                              env=env2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]

    def own(text):  # gloo's C++ connection lines go to stdout, and can be split mid-line by Python's own output
        return [ln.replace(str(two), "OUT").replace(str(one), "OUT") for ln in text.splitlines()
                if ln.strip() and not ln.startswith(("[Gloo]", "total time:")) and "peer ranks" not in ln]

    assert own(outs[0][0]) == own(r.stdout) and own(r.stdout)  # process 0 prints what one process prints
    assert own(outs[1][0]) == []  # process 1 prints nothing
    assert "4 cpu devices in 2 processes)" in outs[0][0] and "1 device)" in r.stdout
    a, b = normalize_outputs(one), normalize_outputs(two)
    assert {"qtable", "search.json", "cali_table", "SensitiveLayerSearch"} <= set(a)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k
    assert json.loads(a["search.json"])["float_layers"]


# ------------------------------------------------------------------------------------------------ units, errors
def test_parse_bytes():
    assert memory.parse_bytes("1.5G") == int(1.5 * 2**30)
    assert memory.parse_bytes("800M") == 800 * 2**20
    assert memory.parse_bytes("512k") == 512 * 1024
    assert memory.parse_bytes("2e9") == 2_000_000_000
    assert memory.parse_bytes("0") == 0
    with pytest.raises(QsensError, match="--max_memory 'lots'"):
        memory.parse_bytes("lots")


_RSS_PROBE = """
import sys
import numpy as np
import qsens  # the default policy: freed memory stays in the process
from qsens.search import memory

def rss():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) // 1024

def freed_mb():
    a = np.ones(64 << 18, np.float32)  # 64 MB, touched
    before = rss()
    del a
    return before - rss()

kept = freed_mb()
if sys.argv[1] == "budget":
    memory.set_budget(memory.parse_bytes("300M"))
print(kept, freed_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc policy")
def test_a_memory_budget_hands_large_freed_blocks_back(tmp_path):
    """qsens keeps freed memory by default (qsens/hostmem.py); under --max_memory a freed 64 MB block goes back to
    the kernel (Lite2's heap held 0.6 GB of holes without it)."""
    env = {k: v for k, v in sub_env().items() if k != "QSENS_MALLOC"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    res = {}
    for mode in ("default", "budget"):
        r = subprocess.run([sys.executable, "-c", _RSS_PROBE, mode], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        res[mode] = [int(x) for x in r.stdout.split()]
    assert res["default"][0] < 8 and res["default"][1] < 8  # kept in the process
    assert res["budget"][0] < 8 and res["budget"][1] >= 60  # handed back once a budget is set


def test_carry_bytes_per_image_is_the_largest_live_set(tmp_path):
    # resnet_ish(blocks=2, hw=16, channels=6): a block holds its skip (6x16x16) and its conv output (6x16x16)
    fn, _ = to_jax(sm.save(sm.resnet_ish(blocks=2, hw=16), tmp_path / "rn.onnx"))
    for b in (1, 3):
        assert memory.carry_bytes_per_image(fn.model.graph_at(b)) == 2 * 6 * 16 * 16 * 4


def test_select_devices_messages():
    assert not devices.select("1").sharded and devices.select(None).n == 1
    with pytest.raises(QsensError, match=r"--devices 64: this run sees \d+ device\(s\).*xla_force_host_platform"):
        devices.select("64")
    with pytest.raises(QsensError, match="--devices 'two': give a number of devices or 'all'"):
        devices.select("two")


def test_cli_bad_devices_and_memory_are_one_line_errors(cli_model, tmp_path, capsys):
    for extra, msg in ((["--devices", "64"], "--devices 64: this run sees"),
                       (["--max_memory", "lots"], "--max_memory 'lots': give bytes like 1.5G")):
        rc, out, err = run_cli(["search", cli_model["model"], "--dataset", cli_model["data"], "--out_dir",
                                str(tmp_path), "-q", *extra], capsys)
        assert rc != 0
        assert err.strip().count("\n") == 0 and msg in err, err


def test_qtable_search_on_two_devices_equals_one(cli_model, tmp_path):
    """run_qtable's INT8 walk (accumulated error, every chunk resident) on 2 forced devices."""
    table = tmp_path / "cali_table"
    env = forced_env(2)
    r = subprocess.run([sys.executable, "-m", "qsens", "calibrate", cli_model["model"], "--dataset", cli_model["data"],
                        "--input_num", "8", "--tune_num", "1", "-o", str(table), "-q"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    outs = {}
    for n in ("1", "2"):
        out = tmp_path / f"qt{n}"
        r = subprocess.run([sys.executable, "-m", "qsens", "qtable", cli_model["model"], "--dataset", cli_model["data"],
                            "--input_num", "8", "--calibration_table", str(table), "--expected_cos", "1.0", "--batch",
                            "3", "--out_dir", str(out), "--devices", n, "-q"], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[n] = normalize_outputs(out)
    assert {"qtable", "full_loss_table.txt", "MixPrecSearcher"} <= set(outs["1"])
    for k in ("qtable", "full_loss_table.txt"):
        assert outs["1"][k] == outs["2"][k], k
