"""Calibration tables and qtables: TPU-MLIR text format, parse rules, byte-identical round trips."""

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:  # tests/ is a rootdir-relative path entry (no tests/__init__.py) ...
    import tpu_mlir_parser as ref
except ImportError:  # ... or a package
    from tests import tpu_mlir_parser as ref
from qsens.errors import NumericsError, TableError
from qsens.tables import (
    CaliEntry,
    CaliTable,
    QTable,
    check_table_matches,
    dump_cali_table,
    dump_qtable,
    generated_time,
    read_cali_table,
    read_qtable,
    update_threshold,
    write_cali_table,
    write_qtable,
)

EPOCH = "1700000000"  # 2023-11-14 22:13:20 UTC

# DOC-EN mobilenet_v2 example values: MAX/Percentile were read back from a %.7f table, KL is a tuner
# output that the log prints unformatted.
DOC_TABLE = {
    "input3.1": (2.6186381997094728, -5.5119305, 5.5119305),
    "input5.1": (4.1202815, 0.0, 7.0123456),
    "output_Gemm": (12.5, -12.3456789, 13.0),
}


@pytest.fixture(autouse=True)
def _fixed_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def _write_doc(path, **kw):
    args = dict(method="kl", mlir="mobilenet_v2.mlir", histogram_bins=2048, sample_number=100, tune_number=5)
    args.update(kw)
    return write_cali_table(path, DOC_TABLE, **args)


def test_generated_time_honours_source_date_epoch(monkeypatch):
    assert generated_time() == "2023-11-14 22:13:20"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", generated_time())
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(TableError, match="SOURCE_DATE_EPOCH"):
        generated_time()


def test_write_kld_new_exact_bytes(tmp_path):
    p = tmp_path / "cali_table"
    _write_doc(p, mlir_version="v1.3")
    assert p.read_text() == (
        "# mlir version: v1.3 cali version 1.0\n"
        "# mlir: mobilenet_v2.mlir\n"
        "# genetated time: 2023-11-14 22:13:20\n"
        "# quantization threshold calculation method: kl\n"
        "# histogram number: 2048\n"
        "# sample number: 100\n"
        "###\n"
        "# tune number: 5\n"
        "###\n"
        "# op_name    threshold    min    max\n"
        "input3.1 2.6186382 -5.5119305 5.5119305\n"
        "input5.1 4.1202815 0.0000000 7.0123456\n"
        "output_Gemm 12.5000000 -12.3456789 13.0000000\n"
    )


def test_write_older_styles(tmp_path):
    p = tmp_path / "t"
    _write_doc(p, version_style="kld-old", tune_number=None)
    assert p.read_text().splitlines()[:5] == [
        "# genetated time: 2023-11-14 22:13:20",
        "# histogram number: 2048",
        "# sample number: 100",
        "###",
        "# op_name    threshold    min    max",
    ]
    _write_doc(p, version_style="kld-mid", mlir_version="v1.0")
    assert p.read_text().splitlines()[:8] == [
        "# mlir version: v1.0",
        "# mlir: mobilenet_v2.mlir",
        "# genetated time: 2023-11-14 22:13:20",
        "# histogram number: 2048",
        "# sample number: 100",
        "# tune number: 5",
        "###",
        "# op_name    threshold    min    max",
    ]
    with pytest.raises(ValueError, match="version_style"):
        _write_doc(p, version_style="kld-2030")


def test_kld_new_without_tune_number_writes_zero(tmp_path):
    p = tmp_path / "t"
    _write_doc(p, tune_number=None)
    assert "# tune number: 0\n###\n" in p.read_text()


def test_read_values_and_headers(tmp_path):
    p = tmp_path / "t"
    _write_doc(p)
    t = read_cali_table(p)
    assert t.names == ("input3.1", "input5.1", "output_Gemm")
    assert t["input3.1"] == CaliEntry(2.6186382, -5.5119305, 5.5119305)
    assert t.threshold("output_Gemm") == 12.5
    assert t.thresholds() == {"input3.1": 2.6186382, "input5.1": 4.1202815, "output_Gemm": 12.5}
    assert len(t.headers) == 10 and t.headers[2] == "# genetated time: 2023-11-14 22:13:20"
    assert "input5.1" in t and "nope" not in t and len(t) == 3


def test_round_trip_byte_identical(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _write_doc(a)
    t = read_cali_table(a)
    # same header info -> same bytes
    write_cali_table(
        b, t, method="kl", mlir="mobilenet_v2.mlir", histogram_bins=2048, sample_number=100, tune_number=5
    )
    assert a.read_bytes() == b.read_bytes()
    # re-dump with the raw headers (CalibrationTable.dump) -> same bytes
    dump_cali_table(c, t)
    assert a.read_bytes() == c.read_bytes()


def test_round_trip_keeps_int4_and_asym_sections(tmp_path):
    src = tmp_path / "src"
    text = (
        "# genetated time: 2023-01-01 00:00:00.123456\n"
        "# histogram number: 2048\n"
        "# sample number: 4\n"
        "###\n"
        "# op_name    threshold    min    max\n"
        "a 1.0000000 -1.0000000 1.0000000\n"
        "b 2.5000000 0.0000000 2.5000000\n"
        "\n"
        "#int4_th\n"
        "a 0.7000000 -0.8000000 0.7000000\n"
        "\n"
        "#asym_op\n"
        "conv1\n"
        "conv2\n"
    )
    src.write_text(text)
    t = read_cali_table(src)
    assert t.names == ("a", "b")
    assert dict(t.int4) == {"a": CaliEntry(0.7, -0.8, 0.7)}
    assert t.asym_ops == ("conv1", "conv2")
    out = tmp_path / "out"
    dump_cali_table(out, t)
    assert out.read_text() == text
    # the reference parsers see the same thing
    headers, th = ref.python_parse(out)
    assert th == {"a": [1.0, -1.0, 1.0], "b": [2.5, 0.0, 2.5]}
    cpp = ref.cpp_import(out)
    assert cpp["int8"] == {"a": (1.0, -1.0, 1.0), "b": (2.5, 0.0, 2.5)}
    assert cpp["int4"] == {"a": (0.7, -0.8, 0.7)}
    assert cpp["asym_ops"] == ["conv1", "conv2"]


def test_independent_parsers_agree(tmp_path):
    p = tmp_path / "t"
    _write_doc(p)
    t = read_cali_table(p)
    headers, th = ref.python_parse(p)
    assert tuple(headers) == t.headers
    assert th == {k: list(v) for k, v in t.entries.items()}
    cpp = ref.cpp_import(p)
    assert cpp["int8"] == {k: tuple(v) for k, v in t.entries.items()}
    assert cpp["int4"] == {} and cpp["asym_ops"] == []


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_./:\[\]-]{1,20}", fullmatch=True).filter(lambda s: not s.startswith("#")),
        st.tuples(
            st.floats(1e-5, 1e6, allow_nan=False),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.floats(-1e6, 1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_property_writer_agrees_with_both_reference_parsers(tmp_path_factory, entries):
    p = tmp_path_factory.mktemp("h") / "t"
    write_cali_table(p, entries, method="max", mlir="m.mlir", histogram_bins=2048, sample_number=1)
    ours = read_cali_table(p)
    expect = {k: tuple(float(f"{x:.7f}") for x in v) for k, v in entries.items()}
    assert {k: tuple(v) for k, v in ours.entries.items()} == expect
    assert {k: tuple(v) for k, v in ref.python_parse(p)[1].items()} == expect
    assert ref.cpp_import(p)["int8"] == expect
    q = p.with_suffix(".2")
    dump_cali_table(q, ours)
    assert q.read_bytes() == p.read_bytes()


def test_doc_en_log_threshold_is_printed_unformatted_but_tabled_with_7_decimals(tmp_path):
    # DOC-EN: "adjust layer input3.1 th, with method KL, and threshlod 2.6186381997094728"
    line = "INFO:root:adjust layer input3.1 th, with method KL, and threshlod 2.6186381997094728"
    th = float(line.rsplit(" ", 1)[1])
    assert f"INFO:root:adjust layer input3.1 th, with method KL, and threshlod {th}" == line
    best = (
        "INFO:root:layer input3.1, layer type is top.Conv, best_th = 2.6186381997094728, "
        "best_method = KL, best_cos_loss = 0.008808857469573828"
    )
    m = re.search(r"best_th = (\S+), best_method = (\S+), best_cos_loss = (\S+)", best)
    assert float(m.group(1)) == th and m.group(2) == "KL" and float(m.group(3)) == 0.008808857469573828
    # MAX/Percentile thresholds in the log are already %.7f values read back from a table
    for logged in ("5.5119305", "4.1202815"):
        assert f"{float(logged):.7f}" == logged
    p = tmp_path / "t"
    _write_doc(p)
    base = read_cali_table(p)
    new = update_threshold(base, "input3.1", th)
    out = tmp_path / "new_cali_table.txt"
    dump_cali_table(out, new)
    assert "input3.1 2.6186382 -5.5119305 5.5119305\n" in out.read_text()
    assert ref.python_parse(out)[1]["input3.1"] == [2.6186382, -5.5119305, 5.5119305]


def test_update_threshold_keeps_min_max_and_order(tmp_path):
    p = tmp_path / "t"
    _write_doc(p)
    t = read_cali_table(p)
    u = update_threshold(t, "input5.1", 3.25)
    assert u["input5.1"] == CaliEntry(3.25, 0.0, 7.0123456)
    assert u.names == t.names and u.headers == t.headers
    assert t["input5.1"].threshold == 4.1202815  # original untouched (frozen)
    with pytest.raises(TableError, match="'zzz' is not in the calibration table"):
        update_threshold(t, "zzz", 1.0)


def test_update_to_semantics_match_tpu_mlir(tmp_path):
    # new_cali_table = input table with only the threshold column of one op replaced, headers verbatim
    src = tmp_path / "cali"
    src.write_text("# some header\n###\nx 1.0000000 -2.0000000 3.0000000\ny 4.0000000 0.0000000 4.0000000\n")
    t = update_threshold(read_cali_table(src), "y", 1.23456789)
    out = tmp_path / "new"
    dump_cali_table(out, t)
    assert out.read_text() == (
        "# some header\n###\nx 1.0000000 -2.0000000 3.0000000\ny 1.2345679 0.0000000 4.0000000\n"
    )


def test_frozen():
    t = CaliTable({"a": (1, 2, 3)})
    with pytest.raises(AttributeError):
        t.headers = ()
    with pytest.raises(TypeError):
        t.entries["b"] = CaliEntry(1, 1, 1)


def test_parse_skips_blank_and_stops_at_int4(tmp_path):
    p = tmp_path / "t"
    p.write_text("\n\n# h\n   \n  a 1.0 -1.0 1.0  \n#int4_th\na 0.5 -0.5 0.5\n")
    t = read_cali_table(p)
    assert t.headers == ("# h",)
    assert dict(t.entries) == {"a": CaliEntry(1.0, -1.0, 1.0)}
    assert ref.python_parse(p) == (["# h"], {"a": [1.0, -1.0, 1.0]})


@pytest.mark.parametrize(
    "line, what",
    [
        ("a 1.0 2.0", "expected 4 fields"),
        ("a 1.0 2.0 3.0 4.0", "expected 4 fields"),
        ("a  1.0 2.0 3.0", "expected 4 fields"),  # two spaces: TPU-MLIR splits on one space
        ("a\t1.0\t2.0\t3.0", "expected 4 fields"),
        ("a x 2.0 3.0", "not a plain decimal"),
        ("a nan 2.0 3.0", "not a plain decimal"),
        ("a 1E-5 2.0 3.0", "not a plain decimal"),
        ("a 1.0.0 2.0 3.0", "not a number"),
    ],
)
def test_bad_line_gives_table_error_with_line_number(tmp_path, line, what):
    p = tmp_path / "bad_table"
    p.write_text(f"# header\n###\nok 1.0 -1.0 1.0\n\n{line}\n")
    with pytest.raises(TableError, match=rf"bad_table:5: .*{what}") as ei:
        read_cali_table(p)
    assert "\n" not in str(ei.value)


def test_python_reference_parser_rejects_the_same_field_count_errors(tmp_path):
    p = tmp_path / "t"
    p.write_text("a  1.0 2.0 3.0\n")
    with pytest.raises(RuntimeError):
        ref.python_parse(p)


def test_duplicate_and_missing_file(tmp_path):
    p = tmp_path / "dup"
    p.write_text("a 1.0 -1.0 1.0\nb 1.0 -1.0 1.0\na 2.0 -1.0 1.0\n")
    with pytest.raises(TableError, match=r"dup:3: tensor 'a' appears twice"):
        read_cali_table(p)
    with pytest.raises(TableError, match="not found"):
        read_cali_table(tmp_path / "nope")


def test_write_rejects_nonfinite_and_bad_names(tmp_path):
    with pytest.raises(NumericsError, match="'a'.*non-finite"):
        write_cali_table(
            tmp_path / "t", {"a": (math.nan, 0, 1)}, method="kl", mlir="m", histogram_bins=1, sample_number=1
        )
    with pytest.raises(TableError, match="whitespace"):
        write_cali_table(
            tmp_path / "t", {"a b": (1, 0, 1)}, method="kl", mlir="m", histogram_bins=1, sample_number=1
        )


def test_check_table_matches(tmp_path):
    t = CaliTable({f"t{i}": (1, -1, 1) for i in range(10)})
    check_table_matches(t, [f"t{i}" for i in range(10)])
    names = [f"t{i}" for i in range(3)] + [f"m{i}" for i in range(8)]
    with pytest.raises(TableError) as ei:
        check_table_matches(t, names, "cali.txt")
    msg = str(ei.value)
    assert msg.startswith("cali.txt: calibration table does not match the model")
    assert "missing from the table: 8 [m0, m1, m2, m3, m4, ... (+3 more)]" in msg
    assert "not in the model: 7 [t3, t4, t5, t6, t7, ... (+2 more)]" in msg
    with pytest.raises(
        TableError, match=r"missing from the table: 1 \[x\]$|missing from the table: 1 \[x\];"
    ):
        check_table_matches(CaliTable({}), ["x"])


# ------------------------------------------------------------------------------------------------
# qtable
# ------------------------------------------------------------------------------------------------
def test_write_qtable_exact_bytes(tmp_path):
    p = tmp_path / "qtable"
    q = write_qtable(p, [("input3.1", "F32"), ("conv2", "F32")], sample_number=30)
    assert p.read_text() == (
        "# genetated time: 2023-11-14 22:13:20\n"
        "# sample number: 30\n"
        "# chip: bm1684  mix_mode: F32\n"
        "# number of F32 layer: 2\n"
        "###\n"
        "# op_name   quantize_mode\n"
        "input3.1 F32\n"
        "conv2 F32\n"
    )
    assert q.as_dict() == {"input3.1": "F32", "conv2": "F32"}
    assert ref.cpp_qtable(p) == {"input3.1": "F32", "conv2": "F32"}


def test_qtable_round_trip(tmp_path):
    p, p2, p3 = tmp_path / "q", tmp_path / "q2", tmp_path / "q3"
    write_qtable(p, [("a", "f32"), ("b", "INT8")], sample_number=10)
    q = read_qtable(p)
    assert q.ops == (("a", "F32"), ("b", "INT8")) and q.names == ("a", "b")
    assert "# number of F32 layer: 1" in q.headers
    write_qtable(p2, list(q.ops), sample_number=10)
    dump_qtable(p3, q)
    assert p.read_bytes() == p2.read_bytes() == p3.read_bytes()


def test_qtable_empty_and_no_sample_line(tmp_path):
    p = tmp_path / "q"
    write_qtable(p, [], sample_number=None)
    assert p.read_text().splitlines() == [
        "# genetated time: 2023-11-14 22:13:20",
        "# chip: bm1684  mix_mode: F32",
        "# number of F32 layer: 0",
        "###",
        "# op_name   quantize_mode",
    ]
    assert read_qtable(p) == QTable(ops=(), headers=tuple(p.read_text().splitlines()))


def test_qtable_bm1684_has_no_f16(tmp_path):
    with pytest.raises(TableError, match="F16 is not supported by bm1684"):
        write_qtable(tmp_path / "q", [("a", "F16")], sample_number=1, mix_mode="F16")
    with pytest.raises(TableError, match="unknown quantize mode 'FP32'"):
        write_qtable(tmp_path / "q", [("a", "FP32")], sample_number=1)


def test_read_qtable_rules(tmp_path):
    p = tmp_path / "q"
    p.write_text("# c\n\n   \na F32\r\nb\tint8\nlonely\n")
    with pytest.warns(UserWarning, match="lonely"):
        q = read_qtable(p)
    assert q.ops == (("a", "F32"), ("b", "INT8"))
    assert ref.cpp_qtable(p) == {"a": "F32", "b": "INT8"}
    for bad, msg in [
        ("a F32 x", "expected '<op_name> <MODE>'"),
        ("a F32 ", "expected"),
        (" a F32", "expected"),
        ("a FP99", "unknown quantize mode"),
    ]:
        p.write_text(f"# c\n{bad}\n")
        with pytest.raises(TableError, match=rf"q:2: {msg}"):
            read_qtable(p)
    p.write_text("a F32\na INT8\n")
    with pytest.raises(TableError, match="q:2: op 'a' already listed on line 1"):
        read_qtable(p)
    p.write_text("a F32 x\n")
    with pytest.raises(RuntimeError):
        ref.cpp_qtable(p)
