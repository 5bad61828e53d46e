"""``qsens ops --int8-report``: the ops qsens keeps F32 in the BM1684 INT8 model are exactly those TPU-MLIR 1.23
keeps F32 (its lowered INT8 model of each reference net, tests/fixtures/tpu_mlir/*/int8/qinfo.json), each with
the reason and the TPU-MLIR source of the rule."""

import json

import pytest

from qsens.onnx import to_jax
from qsens.quant.report import int8_report
from tests import tpu_mlir_oracle as O
from tests.cli_util import run_cli

LOCAL = ["gen_act", "gen_pool", "gen_const", "gen_wconst", "mbv3s", "yolo5n", "fpn"]
#: F32 ops and the source each is attributed to (issue 12: "state the list and the source line for each")
EXPECTED_F32 = {
    "gen_act": {},
    "gen_pool": {},
    "gen_const": {"clip24_Clip": "BM1684/Clip.cpp", "div25_Div": "BM1684/Div.cpp"},
    "gen_wconst": {"concat14_Concat": "BM1684/Concat.cpp"},
    "mbv3s": {"/blocks/blocks.0/se/GlobalAveragePool_output_0_GlobalAveragePool": "BM1684/{AvgPool,MaxPool}.cpp"},
    "yolo5n": {},
    "fpn": {"/Resize_output_0_Resize": "BM1684/Interp.cpp"},
}


@pytest.mark.parametrize("name", LOCAL)
def test_f32_ops_are_tpu_mlirs(name):
    fx = O.load(name)
    fn, _ = to_jax(str(O.model_path(fx)))
    rows = int8_report(fn.graph)
    qinfo = fx.json("int8", "qinfo.json")
    theirs = {r["name"] for r in rows if r["type"] != "Input" and qinfo[r["name"]]["dtype"] == "F32"}
    ours = {r["name"]: r for r in rows if r["precision"] == "F32"}
    assert set(ours) == theirs == set(EXPECTED_F32[name])
    for op, src in EXPECTED_F32[name].items():
        assert src in ours[op]["source"] and ours[op]["reason"], ours[op]
    assert all(r["precision"] in ("INT8", "INT8*", "as input", "input") for r in rows if r["name"] not in ours)


def test_cli_int8_report(tmp_path, capsys):
    fx = O.load("fpn")
    out = tmp_path / "rep.json"
    rc, stdout, err = run_cli(["ops", str(O.model_path(fx)), "--int8-report", "--json", str(out)], capsys)
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[1] == "# BM1684 INT8 model: 18 INT8 ops (13 with a threshold-dependent F32 fallback), 1 F32, 0 reshapes"
    row = next(x for x in lines if "/Resize_output_0_Resize " in x)
    assert row.split()[2:4] == ["Interp", "F32"] and "lib/Conversion/TopToTpu/BM1684/Interp.cpp" in row
    rows = json.loads(out.read_text())
    assert [x["precision"] for x in rows].count("F32") == 1 and rows[0]["precision"] == "input"
