"""The experiment framework (experiments/common.py) and the reproducibility of committed results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.common import load_config, rounded, strip_timings, write_result  # noqa: E402


def test_rounded_and_strip_timings(tmp_path):
    data = {"meta": {"seed": 1, "git": "abc", "device": "cpu:x", "cpu": "y", "cores": 2, "versions": {"jax": "0"}},
            "rows": {"a": [0.12345678912, 1, None, {"b": 2.0000004}]}, "timings": {"total_s": 3.3}}
    assert rounded(data)["rows"]["a"] == [0.123457, 1, None, {"b": 2.0}]
    s = strip_timings(data)
    assert "timings" not in s and s["meta"] == {"seed": 1, "versions": {"jax": "0"}}
    p = write_result("x", "run", data, tmp_path)
    assert p == tmp_path / "run.json" and json.loads(p.read_text())["rows"]["a"][0] == 0.123457
    assert p.read_bytes() == write_result("x", "run", data, tmp_path).read_bytes()


def test_configs_name_their_seed():
    for p in sorted((ROOT / "experiments" / "configs").glob("*.json")):
        cfg = load_config(p.stem)
        assert isinstance(cfg["seed"], int) and cfg["models"], p
    assert load_config("seed_table", {"models": ["mnist_mbv2"], "seed": None})["models"] == ["mnist_mbv2"]


def test_run_all_lists_every_driver():
    text = (ROOT / "experiments" / "run_all").read_text()
    for p in (ROOT / "experiments" / "configs").glob("*.json"):
        assert p.stem in text and (ROOT / "experiments" / f"{p.stem}.py").exists(), p.stem


@pytest.mark.zoo
@pytest.mark.slow
def test_seed_table_reproduces_the_committed_json(zoo, tmp_path):
    """experiments/seed_table.py on the MNIST network writes the committed JSON again, byte for byte apart from
    the timings and the machine (the model is trained on this machine: another CPU may round differently)."""
    committed = json.loads((ROOT / "experiments/results/seed_table/mnist_mbv2.json").read_text())
    from qsens.search.workflows import file_sha

    if file_sha(str(zoo / "mnist_mbv2.onnx")) != committed["model_sha256"]:
        pytest.skip("this machine trains mnist_mbv2 to other bytes than the committed run's (float rounding)")
    subprocess.run([sys.executable, str(ROOT / "experiments/seed_table.py"), "--models", "mnist_mbv2", "--work",
                    str(tmp_path / "w"), "--out", str(tmp_path / "o")], check=True, capture_output=True)
    fresh = json.loads((tmp_path / "o" / "mnist_mbv2.json").read_text())
    assert json.dumps(strip_timings(fresh), indent=1) == json.dumps(strip_timings(committed), indent=1)


def test_power_law_fit():
    from experiments.speed_scaling import fit_power

    assert abs(fit_power([10, 30, 100], [2.0, 18.0, 200.0]) - 2.0) < 1e-12  # y = x^2 / 50
    assert abs(fit_power([20, 60, 85], [1.0, 3.0, 4.25]) - 1.0) < 1e-12
    assert fit_power([5, 5], [1.0, 2.0]) is None
