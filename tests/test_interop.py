"""``qsens compare`` (TPU-MLIR's ``npz_tool.py compare``) and ``qsens run --dump`` (``model_runner.py``-style dumps).

``tests/fixtures/npz_compare/``: ``target.npz`` / ``ref.npz`` (every verdict: EQUAL, CLOSE at two orders, SIMILAR,
NOT_SIMILAR, NOT_EQUAL int8, int32, a flat vs NCHW tensor, a cropped shape, zeros, NaN) and TPU-MLIR 1.23's own
``npz_tool.py compare`` output on them for six flag sets (``make_fixture.py`` wrote them with the harness).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from qsens.interop import NOT_SIMILAR, compare_arrays, compare_npz, parse_tolerance
from tests.cli_util import one_line_error, run_cli

FX = Path(__file__).parent / "fixtures" / "npz_compare"
ORACLE = Path(__file__).parent / "fixtures" / "tpu_mlir" / "mtcnn_pnet"
CASES = {"default": [], "v": ["-v"], "tol": ["--tolerance", "0.999,0.95", "-v"], "axis": ["--per_axis_compare", "1", "-v"],
         "excepts": ["--excepts", "not_similar,int8_diff", "-v"], "int8_close0": ["--int8_tensor_close", "0", "-v"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compare_prints_what_tpu_mlir_prints(case, capsys, monkeypatch):
    """Line for line TPU-MLIR 1.23's stdout (verdicts, similarities to 6 digits, summary, min similarities);
    both exit non-zero (TPU-MLIR 255, qsens 1) because some tensors fail."""
    monkeypatch.chdir(FX)
    rc, out, err = run_cli(["compare", "target.npz", "ref.npz", *CASES[case]], capsys)
    assert out == (FX / f"expected_{case}.txt").read_text()
    assert int((FX / f"expected_{case}.rc").read_text()) != 0 and rc == 1
    assert err == ""


def test_compare_values():
    t, r = np.load(FX / "target.npz"), np.load(FX / "ref.npz")
    ok, verdict, _, s = compare_arrays(t["similar"], r["similar"], (0.99, 0.99))
    assert (ok, verdict) == (False, NOT_SIMILAR)  # cosine 0.999454 passes, Euclidean 0.966640 does not
    assert round(s["cosine"], 6) == 0.999454 and round(s["euclid"], 6) == 0.966640 and round(s["sqnr"], 6) == 29.576166
    assert compare_arrays(t["similar"], r["similar"], (0.99, 0.9))[:2] == (True, "SIMILAR")
    assert compare_arrays(t["close"], r["close"], (0.99, 0.99)) == (True, "CLOSE", 0, {"close_order": 4})
    assert compare_arrays(t["int8_diff"], r["int8_diff"], (0.99, 0.99))[:2] == (False, "NOT_EQUAL")
    s = compare_npz(str(FX / "target.npz"), str(FX / "ref.npz"), tolerance="0.99,0.90", out=io.StringIO())
    assert (s["compared"], s["passed"], s["failed"]) == (15, 10, 5)  # + similar, with_nan (Euclidean 0.955 > 0.90)
    assert s["results"]["crop"][1] == "EQUAL" and s["results"]["mismatch"][1] == "EQUAL"  # cropped to the common shape


def test_compare_save_csv(tmp_path, capsys):
    csv = tmp_path / "r.csv"
    rc, out, _ = run_cli(["compare", str(FX / "target.npz"), str(FX / "ref.npz"), "--key", "similar", "-s", str(csv),
                          "--tolerance", "0.99,0.9"], capsys)
    assert rc == 0 and "npz compare PASSED." in out and f"Results saved as {csv}" in out
    lines = csv.read_text().splitlines()
    assert lines[0] == "name, op, quant, pass, sim_cos, sim_euc, sqnr"
    name, _, _, ok, cos, euc, sq = lines[1].split(", ")
    assert (name, ok) == ("similar", "True") and abs(float(cos) - 0.999454) < 1e-6 and abs(float(euc) - 0.96664) < 1e-5


@pytest.mark.parametrize("argv, needles", [
    (["--tolerance", "0.99"], ["--tolerance", "'0.99'", "0.99,0.99"]),
    (["--tolerance", "a,b"], ["--tolerance", "'a,b'"]),
    (["--tolerance", "1.5,0.9"], ["--tolerance", "[-1, 1]"]),
    (["--per_axis_compare", "-2"], ["--per_axis_compare", "'-2'"]),
    (["--per_axis_compare", "x"], ["--per_axis_compare", "'x'"]),
    (["--int8_tensor_close", "2"], ["--int8_tensor_close", "'2'"]),
    (["--key", "nope"], ["--key 'nope'"]),
])
def test_compare_flag_errors(argv, needles, capsys):
    rc, _, err = run_cli(["compare", str(FX / "target.npz"), str(FX / "ref.npz"), *argv], capsys)
    one_line_error(rc, err, *needles)


def test_compare_file_errors(tmp_path, capsys):
    rc, _, err = run_cli(["compare", str(tmp_path / "a.npz"), str(FX / "ref.npz")], capsys)
    one_line_error(rc, err, "a.npz", "does not exist")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    rc, _, err = run_cli(["compare", str(bad), str(FX / "ref.npz")], capsys)
    one_line_error(rc, err, "bad.npz", "not a readable .npz")
    other = tmp_path / "other.npz"
    np.savez(other, zzz=np.zeros(3))
    rc, _, err = run_cli(["compare", str(other), str(FX / "ref.npz")], capsys)
    one_line_error(rc, err, "share no tensor name")


def test_parse_tolerance():
    assert parse_tolerance("0.99,0.90") == (0.99, 0.9)
    assert parse_tolerance(" 0.8 , 0.5 ") == (0.8, 0.5)


# ------------------------------------------------------------------------------------------------ run --dump
def _pnet():
    from qsens.zoo import zoo_path

    return [str(zoo_path("mtcnn_pnet.onnx")), "--input_shapes", "[[1,3,48,48]]"]


def _tpu_mlir_dump(path: Path) -> set[str]:
    """TPU-MLIR's INT8 interpreter run of the PNet fixture as ``model_runner.py --dump_all_tensors`` writes it
    (dequantized float32 values, NCHW) plus ``<tensor>_code``: its integer codes; returns the INT8 tensors."""
    q = json.loads((ORACLE / "int8" / "qinfo.json").read_text())
    out, int8 = {}, set()
    with np.load(ORACLE / "int8" / "int8.npz") as z:
        for k in z.files:
            v = z[k].reshape((z[k].shape[0],) + z[k].shape[2:])  # (samples, 1, C, H, W) -> NCHW at batch = samples
            if q[k]["dtype"] in ("I8", "U8"):
                out[k] = v.astype(np.float32) * np.float32(q[k]["scale"])
                out[f"{k}_code"] = v.astype(np.int8 if q[k]["dtype"] == "I8" else np.uint8)
                int8.add(k)
            else:
                out[k] = v.astype(np.float32)
    np.savez(path, **out)
    return int8


@pytest.mark.zoo
def test_run_int8_dump_equals_tpu_mlir(tmp_path, capsys, zoo):
    """qsens's BM1684 INT8 simulation of TPU-MLIR's table on TPU-MLIR's preprocessed inputs, dumped and compared:
    every integer code EQUAL (what test_tpu_mlir_oracle asserts), the dequantized values EQUAL except the output conv
    (its float32 scale differs in the last bit: CLOSE) and the F32 Softmax (CLOSE)."""
    ours, ref = tmp_path / "qsens.npz", tmp_path / "tpu_mlir.npz"
    int8 = _tpu_mlir_dump(ref)
    rc, out, _ = run_cli(["run", *_pnet(), "--input", str(ORACLE / "int8" / "inputs.npz"), "--int8", "--codes",
                          "--calibration_table", str(ORACLE / "cali_table"), "--dump", str(ours)], capsys)
    assert rc == 0 and f"wrote {ours}: 20 tensors, INT8 (dequantized), 2 sample(s)" in out
    with np.load(ours) as z:
        assert z["conv2d_Conv"].shape == (2, 10, 46, 46) and z["conv2d_Conv_code"].dtype == np.int8
        assert "input_code" not in z.files and "softmax_Softmax_code" not in z.files
    rc, out, _ = run_cli(["compare", str(ours), str(ref), "-v"], capsys)
    assert rc == 0 and "20 compared" in out and "npz compare PASSED." in out
    verdicts = {ln[1:].split("]")[0].strip(): ln.split("]")[1].split()[0] for ln in out.splitlines() if ln.startswith("[")}
    assert {k for k, v in verdicts.items() if v != "EQUAL"} == {"softmax_Softmax", "conv2d_4_Conv"}
    codes = [t for t in int8 if f"{t}_code" in verdicts]  # TPU-MLIR's own Cast tensors (input..._si8) aside
    assert len(codes) == 9 and all(verdicts[f"{t}_code"] == "EQUAL" for t in codes)

    # a qtable sets conv2d_Conv to F32: its tensor is then the float model's, with no codes; the rest stays INT8
    qt = tmp_path / "qtable"
    qt.write_text("# qtable\nconv2d_Conv F32\n")
    fl = tmp_path / "float.npz"
    rc, _, _ = run_cli(["run", *_pnet(), "--input", str(ORACLE / "int8" / "inputs.npz"), "--dump", str(fl)], capsys)
    assert rc == 0
    mixed = tmp_path / "mixed.npz"
    rc, _, _ = run_cli(["run", *_pnet(), "--input", str(ORACLE / "int8" / "inputs.npz"), "--int8", "--codes",
                        "--calibration_table", str(ORACLE / "cali_table"), "--quantize_table", str(qt),
                        "--dump", str(mixed)], capsys)
    assert rc == 0
    with np.load(mixed) as m, np.load(fl) as f, np.load(ours) as q:
        np.testing.assert_array_equal(m["conv2d_Conv"], f["conv2d_Conv"])
        assert "conv2d_Conv_code" not in m.files and "prelu_PRelu_code" in m.files
        assert not np.array_equal(m["prelu_PRelu_code"], q["prelu_PRelu_code"])
        assert sorted(f.files) == sorted(t for t in q.files if not t.endswith("_code"))


@pytest.mark.zoo
def test_run_float_dump_vs_tpu_mlir_f32(tmp_path, capsys, zoo):
    """The float model's outputs on TPU-MLIR's inputs == TPU-MLIR's F32 Top model's (f32.npz), within float noise."""
    ours = tmp_path / "f.npz"
    rc, _, _ = run_cli(["run", *_pnet(), "--input", str(ORACLE / "int8" / "inputs.npz"), "--dump", str(ours)], capsys)
    assert rc == 0
    ref = tmp_path / "ref.npz"
    with np.load(ORACLE / "int8" / "f32.npz") as z:
        np.savez(ref, **{k: z[k].reshape((z[k].shape[0],) + z[k].shape[2:]) for k in z.files})
    s = compare_npz(str(ours), str(ref), out=io.StringIO())
    assert s["compared"] == 2 and s["failed"] == 0
    assert set(s["count"]) >= {"EQUAL", "CLOSE"} and s["count"]["EQUAL"] + s["count"]["CLOSE"] == 2


@pytest.mark.zoo
def test_run_errors(tmp_path, capsys, zoo):
    inp = str(ORACLE / "int8" / "inputs.npz")
    base = ["run", *_pnet(), "--dump", str(tmp_path / "o.npz")]
    rc, _, err = run_cli([*base, "--input", inp, "--int8"], capsys)
    one_line_error(rc, err, "--int8 needs --calibration_table")
    rc, _, err = run_cli([*base, "--input", inp, "--codes"], capsys)
    one_line_error(rc, err, "--codes only apply with --int8")
    rc, _, err = run_cli([*base, "--input", inp, "--calibration_table", str(ORACLE / "cali_table")], capsys)
    one_line_error(rc, err, "--calibration_table only apply with --int8")
    rc, _, err = run_cli(base, capsys)
    one_line_error(rc, err, "--dataset", "--input")
    bad = tmp_path / "in.npz"
    np.savez(bad, a=np.zeros((1, 3, 48, 48), np.float32), b=np.zeros(3))
    rc, _, err = run_cli([*base, "--input", str(bad)], capsys)
    one_line_error(rc, err, "in.npz", "['a', 'b']", "['input']")
    np.savez(bad, input=np.zeros((1, 3, 40, 48), np.float32))
    rc, _, err = run_cli([*base, "--input", str(bad)], capsys)
    one_line_error(rc, err, "in.npz", "[1, 3, 40, 48]", "[1, 3, 48, 48]")
    qt = tmp_path / "qtable"
    qt.write_text("no_such_op F32\n")
    rc, _, err = run_cli([*base, "--input", inp, "--int8", "--calibration_table", str(ORACLE / "cali_table"),
                          "--quantize_table", str(qt)], capsys)
    one_line_error(rc, err, "'no_such_op' is not an op")
