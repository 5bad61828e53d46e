"""``qsens names``: TPU-MLIR's op names read from a Top-dialect ``.mlir`` and qsens's canonical names mapped onto them.

Fixtures (``tests/fixtures/mlir/``): ``efficientnet_lite0_op13.mlir`` and ``mtcnn_pnet.mlir`` are TPU-MLIR 1.23's own
``model_transform.py`` outputs (flags of ``tests/fixtures/tpu_mlir/<model>/meta.json``); ``*_renamed.mlir`` rename
ops by hand (an alias, a ``fused[...]`` location, a name location with a child, an inline location);
``*_unmappable.mlir`` turns Lite0's global AvgPool into a ``top.Reduce`` of another name. ``mlir_parser_ops.json``
is what TPU-MLIR's own ``utils/mlir_parser.MlirParser`` reads from each of them (name, type, outputs, operands).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qsens.onnx.mlir_names import MlirError, map_names, parse_top_mlir, read_names_map
from tests.cli_util import one_line_error, run_cli

FX = Path(__file__).parent / "fixtures" / "mlir"
LITE0 = "efficientnet_lite0_op13"
PARSER = json.loads((FX / "mlir_parser_ops.json").read_text())


def _lite0():
    from qsens.zoo import zoo_path

    return str(zoo_path("efficientnet_lite0_op13.onnx"))


def _pnet():
    from qsens.zoo import zoo_path

    return str(zoo_path("mtcnn_pnet.onnx"))


@pytest.mark.parametrize("name", sorted(PARSER))
def test_parse_equals_tpu_mlir_parser(name):
    """Names, types, output tensors and activation operands as TPU-MLIR's MlirParser reads them."""
    m = parse_top_mlir(str(FX / name))
    theirs = PARSER[name]
    assert [(o.name, o.type, list(o.outputs)) for o in m.ops] == [(o["name"], o["type"], o["outputs"]) for o in theirs]
    tensors = {t for o in theirs for t in o["outputs"]}
    assert [list(o.operands) for o in m.ops] == [[x for x in o["operands"] if x in tensors] for o in theirs]
    assert m.state == "TOP_F32"


def test_parse_lite0_matches_the_oracle_op_list():
    ops = json.loads((Path(__file__).parent / "fixtures" / "tpu_mlir" / LITE0 / "ops.json").read_text())
    m = parse_top_mlir(str(FX / f"{LITE0}.mlir"))
    assert [(o.name, o.type) for o in m.ops] == [(o["name"], o["type"]) for o in ops]
    assert len(m.ops) == 60


def test_parse_renamed_locations():
    m = parse_top_mlir(str(FX / f"{LITE0}_renamed.mlir"))
    by = {o.name: o for o in m.ops}
    assert by["block2/add"].outputs == ("block2/add", "block2/add_alias")  # fused[#loc400, #loc401], one result
    assert by["head/flatten"].outputs == ("head/flatten", "export.py")  # "name"(#loc402 = "export.py":12:4)
    assert by["classifier/fc"].operands == ("head/flatten",)  # inline loc; its weights are not operands
    assert by["stem/conv_relu6"].operands == ("input",)
    assert by["stem/conv_relu6"].shapes == ((1, 32, 112, 112),)
    assert by["classifier/fc"].shapes == ((1, 1000),)


@pytest.mark.zoo
def test_map_lite0_identical(zoo):
    import qsens.onnx

    fn, _ = qsens.onnx.to_jax(_lite0())
    mp = map_names(fn.graph, parse_top_mlir(str(FX / f"{LITE0}.mlir")))
    assert (mp.count("same"), mp.count("renamed"), mp.count("unmapped"), mp.count("mlir_only")) == (60, 0, 0, 0)
    assert mp.tensor_map == {t: t for t in fn.graph.tensors}


@pytest.mark.zoo
def test_map_lite0_renamed(zoo):
    import qsens.onnx

    fn, _ = qsens.onnx.to_jax(_lite0())
    mp = map_names(fn.graph, parse_top_mlir(str(FX / f"{LITE0}_renamed.mlir")))
    renamed = {r.qsens: r.mlir for r in mp.rows if r.status == "renamed"}
    assert renamed == {"/_swish/Clip_output_0_Clip": "stem/conv_relu6", "/_blocks.2/Add_output_0_Add": "block2/add",
                       "/Reshape_output_0_Reshape": "head/flatten", "logits_Gemm": "classifier/fc"}
    assert mp.count("same") == 56 and not mp.unmapped


@pytest.mark.zoo
def test_map_onnx_name_style_by_graph(zoo):
    """--name_style onnx: every name differs; the graph (type + mapped operands) maps all 60 ops."""
    import qsens.onnx

    fn, _ = qsens.onnx.to_jax(_lite0(), name_style="onnx")
    mp = map_names(fn.graph, parse_top_mlir(str(FX / f"{LITE0}.mlir")))
    assert (mp.count("same"), mp.count("renamed"), mp.count("unmapped")) == (1, 59, 0)
    assert mp.tensor_map["/_swish/Clip_output_0"] == "/_swish/Clip_output_0_Clip"
    assert mp.tensor_map["logits"] == "logits_Gemm"


@pytest.mark.zoo
def test_names_cli_unmappable_warns(zoo, capsys):
    import io
    import logging

    buf = io.StringIO()  # qsens's warnings (its own stderr handler may hold an earlier test's capture stream)
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("qsens: warning: %(message)s"))
    logging.getLogger("qsens").addHandler(h)
    try:
        rc, out, _ = run_cli(["names", _lite0(), "--mlir", str(FX / f"{LITE0}_unmappable.mlir"), "--changed-only"],
                             capsys)
    finally:
        logging.getLogger("qsens").removeHandler(h)
    err = buf.getvalue()
    assert rc == 0
    assert "59 same, 0 renamed, 1 unmapped, 1 only in the MLIR" in out
    rows = [ln.split() for ln in out.splitlines()[2:]]
    assert rows == [["57", "/_avg_pooling/GlobalAveragePool_output_0_GlobalAveragePool", "-", "AvgPool", "unmapped"],
                    ["60", "-", "/_avg_pooling/ReduceMean_output_0_ReduceMean", "Reduce", "mlir_only"]]
    warns = [ln for ln in err.splitlines() if ln.startswith("qsens: warning:")]
    assert len(warns) == 2 and "op /_avg_pooling/GlobalAveragePool_output_0_GlobalAveragePool (AvgPool) has no counterpart" in warns[0]


@pytest.mark.zoo
def test_names_cli_errors(zoo, capsys, tmp_path):
    tpu = tmp_path / "lowered.mlir"
    tpu.write_text('module @m attributes {module.state = "TPU_LOWERED"} {\n'
                   '  %0 = "tpu.Conv2D"(%arg0) {} : (tensor<1xf32>) -> tensor<1xf32> loc(#loc1)\n}\n#loc1 = loc("c")\n')
    rc, _, err = run_cli(["names", _pnet(), "--input_shapes", "[[1,3,48,48]]", "--mlir", str(tpu)], capsys)
    one_line_error(rc, err, str(tpu), "not Top-dialect MLIR", "TPU_LOWERED", "model_transform.py")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    rc, _, err = run_cli(["names", _pnet(), "--input_shapes", "[[1,3,48,48]]", "--mlir", str(txt)], capsys)
    one_line_error(rc, err, "notes.txt", "no top.* ops")
    rc, _, err = run_cli(["names", _pnet(), "--input_shapes", "[[1,3,48,48]]", "--mlir", str(tmp_path / "nope.mlir")], capsys)
    one_line_error(rc, err, "nope.mlir", "cannot read")
    rc, _, err = run_cli(["names", _pnet(), "--input_shapes", "[[1,3,48,48]]", "--mlir", str(FX / f"{LITE0}.mlir")], capsys)
    one_line_error(rc, err, "none of the 11 ops", f"{LITE0}.mlir")
    unnamed = tmp_path / "unnamed.mlir"
    unnamed.write_text('module @m attributes {module.state = "TOP_F32"} {\n'
                       '  %0 = "top.Input"(%arg0) {} : (tensor<1xf32>) -> tensor<1xf32> loc(unknown)\n}\n')
    rc, _, err = run_cli(["names", _pnet(), "--input_shapes", "[[1,3,48,48]]", "--mlir", str(unnamed)], capsys)
    one_line_error(rc, err, "line 2", "top.Input has no name")


@pytest.mark.zoo
def test_names_map_flows_into_tables(zoo, capsys, tmp_path):
    """--write-map, then --names_map: the ops list, the calibration table and a dump use the user's TPU-MLIR names."""
    pnet = [_pnet(), "--input_shapes", "[[1,3,48,48]]"]
    mp = tmp_path / "names.json"
    rc, out, _ = run_cli(["names", *pnet, "--mlir", str(FX / "mtcnn_pnet_renamed.mlir"), "--write-map", str(mp)], capsys)
    assert rc == 0 and "6 same, 5 renamed, 0 unmapped" in out
    doc = json.loads(mp.read_text())
    assert doc["format"] == "qsens-names-map-1" and doc["name_style"] == "tpu_mlir" and doc["unmapped"] == []
    assert doc["map"]["conv2d_Conv"] == "pnet/conv1" and doc["map"]["conv2d_4_Conv"] == "pnet/bbox"
    theirs = [o["name"] for o in PARSER["mtcnn_pnet_renamed.mlir"]]

    rc, out, _ = run_cli(["ops", *pnet, "--names_map", str(mp)], capsys)
    assert rc == 0
    assert [ln.split()[1] for ln in out.splitlines()[2:]] == theirs

    from qsens.tables import read_cali_table
    from qsens.zoo import zoo_path

    table = tmp_path / "cali_table"
    rc, _, _ = run_cli(["calibrate", *pnet, "--names_map", str(mp), "--dataset", str(zoo_path("images100")),
                        "--input_num", "4", "--tune_num", "0", "-q", "-o", str(table),
                        "--mean", "127.5,127.5,127.5", "--scale", "0.0078125,0.0078125,0.0078125"], capsys)
    assert rc == 0
    assert list(read_cali_table(table).names) == theirs
    dump = tmp_path / "f.npz"  # a float dump keyed by the user's names
    rc, _, _ = run_cli(["run", *pnet, "--names_map", str(mp), "--input",
                        str(Path(__file__).parent / "fixtures" / "tpu_mlir" / "mtcnn_pnet" / "int8" / "inputs.npz"),
                        "--dump", str(dump)], capsys)
    assert rc == 0
    import numpy as np

    with np.load(dump) as z:
        assert list(z.files) == theirs and z["pnet/conv1"].shape == (2, 10, 46, 46)
    # the same map is refused for the other name style, and a map for another model renames nothing
    rc, _, err = run_cli(["ops", *pnet, "--names_map", str(mp), "--name_style", "onnx"], capsys)
    one_line_error(rc, err, str(mp), "--name_style tpu_mlir")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"a_Conv": "x", "b_Conv": "y"}))
    rc, _, err = run_cli(["ops", *pnet, "--names_map", str(other)], capsys)
    one_line_error(rc, err, "renames none of the 11 tensors", "qsens names")


def test_read_names_map_errors(tmp_path):
    assert read_names_map(None) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(Exception, match="is not JSON"):
        read_names_map(str(bad))
    bad.write_text(json.dumps({"a": 1}))
    with pytest.raises(Exception, match="JSON object of qsens name"):
        read_names_map(str(bad))
    bad.write_text(json.dumps({"a": "x", "b": "x"}))
    with pytest.raises(Exception, match="several qsens names onto 'x'"):
        read_names_map(str(bad))
    with pytest.raises(Exception, match="cannot be read"):
        read_names_map(str(tmp_path / "missing.json"))
    assert read_names_map(str(_write(tmp_path / "ok.json", {"a": "x"}))) == {"a": "x"}


def _write(p: Path, doc) -> Path:
    p.write_text(json.dumps(doc))
    return p


def test_not_top_dialect_error_type(tmp_path):
    p = _write(tmp_path / "x.mlir", {})
    with pytest.raises(MlirError, match="not Top-dialect MLIR"):
        parse_top_mlir(str(p))
