"""``qsens calibrate --search ...`` on a generated net: files, resume after SIGKILL, errors.
Fidelity against TPU-MLIR 1.30.2: tests/test_tpu_mlir_calisearch.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

try:
    import search_models as sm
    from cli_util import EPOCH, gate_file, kill_at_gate, one_line_error, run_cli
except ImportError:
    from tests import search_models as sm
    from tests.cli_util import EPOCH, gate_file, kill_at_gate, one_line_error, run_cli

from qsens import cli


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("cs")
    model = sm.save(sm.resnet_ish(blocks=3, hw=12, seed=5), d / "net.onnx")
    data = sm.npy_dataset(d / "data", n=10, shape=(1, 3, 12, 12), seed=1)
    post = gate_file(d / "post.py", 'len(ck["layers"]) >= 2')  # blocks once 2 layers are searched
    return {"model": model, "data": data, "post": post}


def argv(net, out: Path, *extra, search="search_qtable"):
    return ["calibrate", net["model"], "--dataset", net["data"], "--input_num", "8", "--inference_num", "6",
            "--tune_num", "1", "--search", search, "--expected_cos", "0.999999", "--max_float_layers", "2",
            "--quantize_table", str(out / "qtable"), "-o", str(out / "cali_table"), "--post_process", net["post"],
            "-q", *extra]


@pytest.fixture(scope="module")
def full(net, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        mp.delenv("QSENS_TEST_GATE", raising=False)
        assert cli.main(argv(net, out)) == 0
    return out


def test_search_qtable_files(full):
    names = sorted(p.name for p in full.iterdir())
    assert names == ["Search_Qtable", "cali_table", "cali_table_mse.1", "cali_table_mse_tune", "new_cali_table.txt",
                     "qtable", "search_qtable.json"]
    assert (full / "cali_table").read_bytes() == (full / "cali_table_mse_tune").read_bytes()  # TPU-MLIR's copy
    head = (full / "cali_table_mse.1").read_text().splitlines()
    assert head[3] == "# quantization threshold calculation method: mse" and head[7] == "# tune number: 1"
    q = (full / "qtable").read_text().splitlines()
    res = json.loads((full / "search_qtable.json").read_text())
    st = res["state"]
    assert q[0] == "# generated time: 2023-11-14 22:13:20" and q[7] == "# # part_quant_mode: None"
    assert q[q.index("# custom layers") + 1:] == [f"{n} F32" for n in res["float_layers"]]
    assert st["search_layers"] and len(st["layers"]) == len(st["search_layers"])
    log = (full / "Search_Qtable").read_text().splitlines()
    assert log[:3] == ["INFO:root:quantize_method_list=['mse']", "INFO:root:run float mode: net.onnx",
                       "INFO:root:run int8 mode: net.onnx"]
    assert log[-4] == "INFO:root:int8 outputs_cos:{:.6f} old".format(st["all_int8_cos"])
    assert sum(ln.startswith("INFO:root:start to handle layer: ") for ln in log) == len(st["search_layers"])


def test_search_qtable_resume_after_sigkill(net, full, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    gate = out / "search_qtable.ckpt.json"
    kill_at_gate(argv(net, out), gate, tmp_path)
    assert len(json.loads(gate.read_text())["layers"]) >= 2
    assert not (out / "search_qtable.json").exists() and not (out / "new_cali_table.txt").exists()
    rc, stdout, _ = run_cli(argv(net, out, "--resume"), capsys)
    assert rc == 0
    assert "resuming: calibration reused from" in stdout and "resuming: search_qtable state" in stdout
    for name in ("qtable", "cali_table", "cali_table_mse.1", "cali_table_mse_tune", "new_cali_table.txt"):
        assert (out / name).read_bytes() == (full / name).read_bytes(), name
    a, b = (json.loads((d / "search_qtable.json").read_text()) for d in (out, full))
    assert a["state"] == b["state"] and a["float_layers"] == b["float_layers"]
    assert not gate.exists()


def test_search_threshold(net, tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    rc, stdout, _ = run_cli(argv(net, out, search="search_threshold"), capsys)
    assert rc == 0
    res = json.loads((out / "search_threshold.json").read_text())
    assert list(res["scores"]) == ["kl", "max", "percentile9999", "mse"]
    best = max(res["scores"].items(), key=lambda kv: kv[1])[0]
    assert res["best"] == best and f"optimal_method_name: {best}" in stdout
    assert (out / "cali_table").read_bytes() == (out / f"cali_table_{best}_tune").read_bytes()
    # TPU-MLIR 1.30.2: an existing table is kept as it is (a warning, nothing searched)
    rc, stdout, _ = run_cli(argv(net, out, search="search_threshold"), capsys)
    assert rc == 0 and "already exists; skip threshold search" in stdout


def test_errors(net, tmp_path, capsys):
    a = argv(net, tmp_path)
    k = a.index("--quantize_table")
    rc, _, err = run_cli(a[:k] + a[k + 2:], capsys)
    one_line_error(rc, err, "--quantize_table")
    k = a.index("--search")
    rc, _, err = run_cli(a + ["--quantize_method_list", "aciq_gauss"], capsys)
    one_line_error(rc, err, "ACIQ")
    rc, _, err = run_cli(a + ["--quantize_method_list", "foo"], capsys)
    one_line_error(rc, err, "unknown method 'foo'")
    rc, _, err = run_cli(a + ["--expected_cos", "1.5"], capsys)
    one_line_error(rc, err, "--expected_cos 1.5")
    assert not (tmp_path / "qtable").exists()
