"""Refactors keep the search's results byte-identical: qtable, new_cali_table.txt, every calibration table,
the log and search.json (minus timings) of fixed runs, compared with what the code wrote before the refactor.

The fixtures in ``tests/fixtures/search_golden/<case>/`` were written by this file with
``QSENS_REGEN_GOLDEN=1 python -m pytest tests/test_search_golden.py`` at commit 0bb63c9 (the last commit of the
hard-wired ``qsens/search/run.py:_run``), on this project's 2-core CPU VM.  Paths and wall times are the only
parts normalized away (``SOURCE_DATE_EPOCH`` fixes the header dates).  ``lite0_demo`` was regenerated once, on
purpose, by the commit that made the merged 1x1 convs' float32 arithmetic TPU-MLIR's (a fidelity fix, not a
refactor: Lite0's two merged filters and biases are now bit-identical to model_transform.py's; all-INT8 similarity
0.8569944 -> 0.8569957, the same float layers and qtable); the other cases did not change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import search_models as sm
    from cli_util import normalize_outputs
except ImportError:
    from tests import search_models as sm
    from tests.cli_util import normalize_outputs

from qsens import cli

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "search_golden"
EPOCH = "1700000000"
REGEN = bool(os.environ.get("QSENS_REGEN_GOLDEN"))
ZOO = Path(os.environ.get("QSENS_HOME", Path.home() / ".cache" / "qsens")) / "zoo"


def run_case(tmp_path: Path, argv: list[str], model: str) -> dict[str, str]:
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        mp.delenv("QSENS_DEBUG", raising=False)
        rc = cli.main(argv + ["--out_dir", str(out), "-q"])
    assert rc == 0
    return normalize_outputs(out, model)


def check(case: str, got: dict[str, str]) -> None:
    d = GOLDEN / case
    if REGEN:
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for name, text in got.items():
            (d / name).write_text(text)
        return
    want = {p.name: p.read_text() for p in sorted(d.iterdir())}
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{case}/{name} differs from the pre-refactor output"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden")
    model = sm.save(sm.resnet_ish(blocks=3, hw=12, seed=5), d / "net.onnx")
    data = sm.npy_dataset(d / "data", n=10, shape=(1, 3, 12, 12), seed=1)
    return model, data


@pytest.mark.parametrize("case, extra", [
    ("tiny_fast", []),
    ("tiny_naive", ["--strategy", "naive"]),
    ("tiny_concat_mse", ["--method_batch", "concat", "--methods", "max,percentile9999,kl,mse", "--max_float_layers", "3"]),
])
def test_tiny_byte_identical(tiny, tmp_path, case, extra):
    model, data = tiny
    argv = ["search", model, "--dataset", data, "--input_num", "8", "--inference_num", "4", "--tune_num", "1",
            "--expected_cos", "1.0", *extra]
    check(case, run_case(tmp_path, argv, model))


@pytest.mark.zoo
def test_pnet_byte_identical(zoo, tmp_path):
    model = str(ZOO / "mtcnn_pnet.onnx")
    argv = ["search", model, "--dataset", str(ZOO / "images100"), "--input_num", "40", "--inference_num", "10",
            "--expected_cos", "0.9999", "--max_float_layers", "3", "--input_shapes", "[[1,3,48,48]]"]
    check("pnet", run_case(tmp_path, argv, model))


@pytest.mark.zoo
def test_lite0_demo_byte_identical(zoo, tmp_path):
    """README's demo: EfficientNet-Lite0, 100 calibration / 30 inference images, expected_cos 0.9999."""
    model = str(ZOO / "efficientnet_lite0.onnx")
    argv = ["search", model, "--dataset", str(ZOO / "images100"), "--input_num", "100", "--inference_num", "30",
            "--expected_cos", "0.9999"]
    check("lite0_demo", run_case(tmp_path, argv, model))
