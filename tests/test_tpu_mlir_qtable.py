"""``qsens qtable`` against TPU-MLIR 1.23's ``run_qtable.py`` (fixtures ``tests/fixtures/tpu_mlir/*/run_qtable*``,
written by ``reference/tpu_mlir/run.py --steps transform,qtable``; see ``README_run_qtable.md`` there).

Every fixture: the same layer-cos list (names in order, values to TPU-MLIR's 6 printed decimals), the same
float steps (op, consumers, outputs cos, reverted or not, success / fail), the same end (including the
exception that ends RNet's search), the same qtable and the same reported ``mix model outputs_cos``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

try:
    import tpu_mlir_oracle as O
    from test_tpu_mlir_oracle import _dataset, _flag_args
except ImportError:
    from tests import tpu_mlir_oracle as O
    from tests.test_tpu_mlir_oracle import _dataset, _flag_args

CASES = sorted((p.parent.name, p.name) for p in O.FIXTURES.glob("*/run_qtable*") if (p / "summary.json").exists())
COS = 1.5e-6  # TPU-MLIR prints 6 decimals
#: per case: outputs-cos tolerance of the float steps where it differs (the decisions are still the same)
STEP_TOL = {
    # Lite0 (all-INT8 cos 0.844): each float step's ops run in float32 on XLA here and oneDNN in TPU-MLIR; codes
    # of the Casts behind them differ by one here and there and the difference grows through the INT8 ops after
    # them (the same effect as the sensitive search's 3e-4 on Lite0's mix model).  Same 27 layers, same 7 steps,
    # same decisions, same 16 float layers.  7e-4 since the merged convs' float32 arithmetic (d1342dd): one step
    # (block 1's project conv) is 6.3e-4 apart where it was below 6e-4, the all-INT8 model itself being bit-exact.
    ("efficientnet_lite0_op13", "run_qtable"): 7e-4,
}
#: per case: layer-cos tolerance (the INT8 prefix carries the steps' Cast outputs, see above)
LAYER_TOL = {("efficientnet_lite0_op13", "run_qtable"): 6e-5}


def run(name, sub, tmp_path):
    from qsens.cli import main

    fx = O.load(name)
    s = json.loads((fx.path / sub / "summary.json").read_text())
    out = tmp_path / "out"
    chip = next((c["cmd"].split("--chip ")[1].split()[0] for c in s.get("commands", [])
                 if c["cmd"].startswith("run_qtable.py") and "--chip " in c["cmd"]), "bm1684")
    argv = ["qtable", str(O.model_path(fx)), "--dataset", _dataset(fx), "--input_num", str(s["input_num"]),
            *_flag_args(fx), "--calibration_table", str(fx.file("cali_table")), "--expected_cos",
            str(s["expected_cos"]), "--min_layer_cos", str(s["min_layer_cos"]), "--chip", chip, "--out_dir", str(out),
            "-q"]
    rc = main(argv)
    return rc, s, out


def table_rows(path: Path):
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("No."):
            name = line.split("Layer:")[1].split("\t")[0].strip()
            rows.append((name, float(line.rsplit("Cos:", 1)[1])))
    return rows


def qtable_ops(path: Path):
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def test_cases_present():
    assert len(CASES) >= 13 and ("efficientnet_lite0_op13", "run_qtable") in CASES
    # BM1684X (fp_type auto: the float model and the float layers F16, tests/test_f16_oracle.py)
    assert ("mtcnn_pnet", "run_qtable_bm1684x") in CASES


@pytest.mark.zoo
@pytest.mark.parametrize("name, sub", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_qtable_equals_run_qtable(name, sub, tmp_path, zoo, capsys):
    rc, theirs, out = run(name, sub, tmp_path)
    assert rc == 0
    if theirs.get("early_exit_int8_cos") is not None:  # all-INT8 already above expected_cos: nothing written
        assert "job success, current int8 cos:" in capsys.readouterr().out
        assert not (out / "qtable").exists()
        return
    ours = json.loads((out / "qtable.json").read_text())
    st = ours["state"]
    assert abs(st["all_int8_cos"] - theirs["all_int8_cos"]) <= COS
    # the layer cos list, in evaluation order (the loss table holds it sorted)
    assert [n for n, _ in st["layer_cos"]] == [n for n, _ in theirs["layer_cos"]]
    for (n, a), (_, b) in zip(st["layer_cos"], theirs["layer_cos"]):
        assert abs(a - b) <= LAYER_TOL.get((name, sub), COS), (n, a, b)
    ours_rows = table_rows(out / "full_loss_table.txt")  # sorted ascending by cos, like TPU-MLIR's
    assert sorted(n for n, _ in ours_rows) == sorted(n for n, _ in theirs["layer_cos"])
    assert [c for _, c in ours_rows] == sorted(c for _, c in ours_rows)
    assert dict(ours_rows) == {n: round(c, 6) for n, c in st["layer_cos"]}
    # every float step
    assert len(st["steps"]) == len(theirs["steps"])
    for a, b in zip(st["steps"], theirs["steps"]):
        assert (a["op"], a["next_ops"], a["reverted"], a["result"]) == (b["op"], b["next_ops"], b["reverted"], b["result"])
        tol = STEP_TOL.get((name, sub), COS)
        assert abs(a["outputs_cos"] - b["outputs_cos"]) <= tol, (a["op"], a["outputs_cos"], b["outputs_cos"])
    assert abs(st["outputs_cos"] - theirs["mix_outputs_cos"]) <= STEP_TOL.get((name, sub), COS)
    assert ([st["exception"]] if st["exception"] else []) == theirs["exceptions"]
    assert qtable_ops(out / "qtable") == theirs["fp_layers"]
    assert qtable_ops(out / "qtable") == qtable_ops(O.FIXTURES / name / sub / "qtable")
