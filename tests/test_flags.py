"""TPU-MLIR's calibration flags that change numbers: ``--histogram_bin_num``, ``--tune_list``, ``--debug_cmd``
(``qsens calibrate``; the first two on ``qsens search`` too), ``--fp_type`` on ``qsens search``, ``--data_list``.

Semantics read from TPU-MLIR 1.23 (``qsens/calib/flags.py`` lists the files and functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsens.calib.flags import DebugCmd, calibration_flags, histogram_bin_num, parse_debug_cmd
from qsens.errors import QsensError
from tests.cli_util import one_line_error, run_cli

PNET_FLAGS = ["--input_shapes", "[[1,3,48,48]]", "--mean", "127.5,127.5,127.5", "--scale", "0.0078125,0.0078125,0.0078125"]


def _pnet():
    from qsens.zoo import zoo_path

    return str(zoo_path("mtcnn_pnet.onnx"))


def _images():
    from qsens.zoo import zoo_path

    return str(zoo_path("images100"))


def _body(path: Path) -> dict[str, list[float]]:
    return {ln.split()[0]: [float(x) for x in ln.split()[1:]] for ln in path.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}


def _header(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith("#") and "time" not in ln]


# ------------------------------------------------------------------------------------------------ parsing
def test_debug_cmd_parsing():
    d = parse_debug_cmd("USE_MAX;tune_steps=7;debug_log")  # keys lower-cased, as TPU-MLIR's parse_debug_cmd
    assert d.keys == (("use_max", None), ("tune_steps", "7"), ("debug_log", None))
    assert d.method("kl") == "max" and d.tune_steps == 7 and not d.skips_tuning
    # process_compute_threshold's order: Percentile9999, then MSE, then MAX, each from debug_cmd or --cali_method
    assert parse_debug_cmd("use_max;use_percentile9999").method("kl") == "percentile9999"
    assert parse_debug_cmd("use_max").method("mse") == "mse"
    assert parse_debug_cmd("use_percentile9999").skips_tuning
    assert DebugCmd().method("kl") == "kl" and DebugCmd().tune_steps == 21
    assert parse_debug_cmd("") == DebugCmd() and parse_debug_cmd(";;") == DebugCmd()


@pytest.mark.parametrize("text, needles", [
    ("use_torch_observer_for_cali", ["'use_torch_observer_for_cali'", "does not model", "accepted keys: use_max"]),
    ("int4", ["'int4'", "4-bit"]),
    ("foo=1", ["'foo' is unknown", "accepted keys"]),
    ("tune_steps=0", ["tune_steps", "'0'"]),
    ("tune_steps", ["tune_steps", "None"]),
    ("use_max=1", ["'use_max' takes no value"]),
])
def test_debug_cmd_errors(text, needles):
    with pytest.raises(QsensError) as e:
        parse_debug_cmd(text)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_histogram_bin_num_values():
    assert histogram_bin_num("1024") == 1024 and histogram_bin_num(2048) == 2048
    for bad in ("0", "1", "abc", "2.5", "-5"):
        with pytest.raises(QsensError, match="--histogram_bin_num must be a whole number >= 2"):
            histogram_bin_num(bad)


@pytest.mark.zoo
def test_calibration_flags_tune_list(tmp_path, zoo):
    """TPU-MLIR's DataSelector(None, tune_num, tune_list): the first tune_num lines, tune_num = their count."""
    files = sorted(str(p) for p in Path(_images()).iterdir())[:4]
    lst = tmp_path / "tune.txt"
    lst.write_text("\n".join(files) + "\n")

    class Opts:
        tune_num, tune_list, debug_cmd, histogram_bin_num = 2, str(lst), "", "2048"

    method, kw = calibration_flags(Opts, "kl")
    assert method == "kl" and kw["tune_files"] == files[:2] and kw["tune_num"] == 2 and kw["n_bins"] == 2048
    Opts.tune_num = 0  # 0 = every line (and the tuner still runs, as in TPU-MLIR)
    assert calibration_flags(Opts, "kl")[1]["tune_num"] == 4
    Opts.debug_cmd = "use_percentile9999"
    assert calibration_flags(Opts, "kl")[0] == "percentile9999" and calibration_flags(Opts, "kl")[1]["tune_num"] == 0


# ------------------------------------------------------------------------------------------------ calibrate
@pytest.mark.zoo
def test_calibrate_flags_change_numbers(tmp_path, capsys, zoo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["calibrate", _pnet(), *PNET_FLAGS, "--dataset", _images(), "--input_num", "6", "-q"]

    def cal(name, *extra):
        rc, _, err = run_cli([*base, "-o", str(tmp_path / name), *extra], capsys)
        assert rc == 0, err
        return tmp_path / name

    default = cal("default", "--debug_cmd", "dump_list")
    sel = (tmp_path / "selected_image_list.txt").read_text().splitlines()
    assert len(sel) == 6  # dump_list: TPU-MLIR's selected_image_list.txt, the calibration samples in order
    # --tune_list with the first tune_num calibration samples == the default run (the tuner's own samples)
    (tmp_path / "same.txt").write_text("\n".join(sel[:5]) + "\n")
    same = cal("same", "--tune_list", str(tmp_path / "same.txt"))
    assert _body(same) == _body(default) and _header(same) == _header(default)
    # other tune samples: other tuned KL thresholds, header "# tune number: 2"
    (tmp_path / "other.txt").write_text("\n".join(sel[-2:]) + "\n")
    other = cal("other", "--tune_list", str(tmp_path / "other.txt"))
    assert "# tune number: 2" in _header(other)
    assert _body(other) != _body(default)
    assert {t: v[1:] for t, v in _body(other).items()} == {t: v[1:] for t, v in _body(default).items()}  # min/max same
    # --histogram_bin_num: the header says it, KL sees other histograms
    b1024 = cal("b1024", "--histogram_bin_num", "1024")
    assert "# histogram number: 1024" in _header(b1024) and "# histogram number: 2048" in _header(default)
    assert _body(b1024) != _body(default)
    # --debug_cmd use_percentile9999 == --cali_method percentile9999 --tune_num 0 (TPU-MLIR skips the tuner)
    p1 = cal("p1", "--debug_cmd", "use_percentile9999")
    p2 = cal("p2", "--cali_method", "percentile9999", "--tune_num", "0")
    assert _body(p1) == _body(p2) != _body(default)


@pytest.mark.zoo
@pytest.mark.parametrize("argv, needles", [
    (["--histogram_bin_num", "abc"], ["--histogram_bin_num", "'abc'"]),
    (["--histogram_bin_num", "1"], ["--histogram_bin_num", "'1'", "2048"]),
    (["--debug_cmd", "fp8"], ["--debug_cmd key 'fp8'", "accepted keys"]),
    (["--debug_cmd", "nope"], ["--debug_cmd key 'nope' is unknown"]),
    (["--tune_list", "/no/such/list.txt"], ["--tune_list", "/no/such/list.txt", "does not exist"]),
    (["--debug_cmd", "use_max", "--search", "search_threshold", "--quantize_table", "q"],
     ["--debug_cmd use_max with calibrate --search", "--quantize_method_list"]),
    (["--debug_cmd", "tune_steps=0", "--search", "search_threshold", "--quantize_table", "q"],
     ["--debug_cmd tune_steps needs a whole number >= 1"]),
    (["--debug_cmd", "max_sampling=3", "--search", "search_qtable", "--quantize_table", "q"],
     ["--debug_cmd key 'max_sampling' is unknown", "tune_steps"]),
])
def test_calibrate_flag_errors(argv, needles, tmp_path, capsys, zoo):
    rc, _, err = run_cli(["calibrate", _pnet(), *PNET_FLAGS, "--dataset", _images(), "--input_num", "2", "-q",
                          "-o", str(tmp_path / "t"), *argv], capsys)
    one_line_error(rc, err, *needles)


# ------------------------------------------------------------------------------------------------ search
@pytest.mark.zoo
@pytest.mark.parametrize("argv, needles", [
    (["--fp_type", "F16"], ["--fp_type F16", "BM1684", "F32"]),
    (["--fp_type", "BF16"], ["--fp_type BF16", "BM1684"]),
    (["--fp_type", "int8"], ["--fp_type", "'int8'"]),
    (["--histogram_bin_num", "x"], ["--histogram_bin_num", "'x'"]),
    (["--tune_list", "/no/such/list.txt"], ["--tune_list", "does not exist"]),
    (["--debug_cmd", "use_max"], ["--debug_cmd use_max on search", "KL candidate table with max", "--methods"]),
    (["--debug_cmd", "use_mse"], ["--debug_cmd use_mse on search", "no effect", "--methods"]),
    (["--debug_cmd", "tune_steps=0"], ["tune_steps needs a whole number >= 1"]),
    (["--debug_cmd", "dump_list"], ["'dump_list' is a run_calibration key that search does not take"]),
    (["--debug_cmd", "max_sampling"], ["'max_sampling' needs a value"]),
])
def test_search_flag_errors(argv, needles, tmp_path, capsys, zoo):
    rc, _, err = run_cli(["search", _pnet(), *PNET_FLAGS, "--dataset", _images(), "--input_num", "4",
                          "--inference_num", "2", "--out_dir", str(tmp_path), "-q", *argv], capsys)
    one_line_error(rc, err, *needles)


@pytest.mark.zoo
def test_search_histogram_bins_and_tune_list(tmp_path, capsys, zoo):
    """run_sensitive_layer's --histogram_bin_num / --tune_list / --fp_type F32 reach every table the search writes."""
    from qsens.data.dataset import select_files

    files = select_files(dataset=_images(), input_num=6)
    lst = tmp_path / "tune.txt"
    lst.write_text("\n".join(files[-3:]) + "\n")
    rc, out, err = run_cli(["search", _pnet(), *PNET_FLAGS, "--dataset", _images(), "--input_num", "6",
                            "--inference_num", "3", "--histogram_bin_num", "1024", "--tune_list", str(lst),
                            "--fp_type", "F32", "--expected_cos", "0.9999", "--max_float_layers", "1",
                            "--out_dir", str(tmp_path / "run"), "-q"], capsys)
    assert rc == 0, err
    for name in ("cali_table", "cali_table_KL.1", "cali_table_KL_tune", "cali_table_MAX.1"):
        h = _header(tmp_path / "run" / name)
        assert "# histogram number: 1024" in h, (name, h)
    assert "# tune number: 3" in _header(tmp_path / "run" / "cali_table_KL_tune")


@pytest.mark.zoo
@pytest.mark.parametrize("argv, needles", [
    (["--debug_cmd", "tune_steps=5"], ["'tune_steps' has no effect on run_qtable", "qsens calibrate"]),
    (["--debug_cmd", "run_bias_correction"], ["run_bias_correction", "not modelled", "--bc"]),
    (["--debug_cmd", "debug_log;nope"], ["'nope' is unknown", "max_sampling"]),
])
def test_qtable_debug_cmd_errors(argv, needles, tmp_path, capsys, zoo):
    table = Path(__file__).parent / "fixtures" / "tpu_mlir" / "mtcnn_pnet" / "cali_table"
    rc, _, err = run_cli(["qtable", _pnet(), *PNET_FLAGS, "--dataset", _images(), "--input_num", "2",
                          "--calibration_table", str(table), "--out_dir", str(tmp_path), "-q", *argv], capsys)
    one_line_error(rc, err, *needles)


def test_debug_cmd_per_tool():
    """What each tool takes (qsens.calib.flags: run_sensitive_layer / run_qtable 1.23): the searcher's logging keys
    are accepted with no numeric effect; tune_steps reaches search's tuners."""
    d = parse_debug_cmd("tune_steps=5;debug_log;max_sampling=100;visual_tensor=all;dump_tensor_diff_by_html", "search")
    assert d.tune_steps == 5 and d.method("kl") == "kl" and not d.skips_tuning
    assert parse_debug_cmd("debug_log;max_sampling=7", "qtable").tune_steps == 21
    with pytest.raises(QsensError, match="'max_sampling' is unknown"):  # not a run_calibration key
        parse_debug_cmd("max_sampling=3")
    with pytest.raises(ValueError):
        parse_debug_cmd("debug_log", "deploy")


# ------------------------------------------------------------------------------------------------ data_list
@pytest.mark.zoo
def test_data_list_on_run_and_calibrate(tmp_path, capsys, zoo):
    from qsens.data.dataset import select_files

    files = select_files(dataset=_images(), input_num=3)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(files[::-1]) + "\n")  # the list's order, not the dataset's shuffle
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run_cli(["run", _pnet(), *PNET_FLAGS, "--data_list", str(lst), "--input_num", "3", "--dump", str(a)], capsys)[0] == 0
    assert run_cli(["run", _pnet(), *PNET_FLAGS, "--dataset", _images(), "--input_num", "3", "--dump", str(b)], capsys)[0] == 0
    import numpy as np

    with np.load(a) as za, np.load(b) as zb:
        np.testing.assert_array_equal(za["conv2d_Conv"], zb["conv2d_Conv"][::-1])
    rc, _, err = run_cli(["run", _pnet(), *PNET_FLAGS, "--data_list", str(tmp_path / "none.txt"), "--dump", str(a)], capsys)
    one_line_error(rc, err, "none.txt", "--data_list")


# ------------------------------------------------------------------------------------------------ vs TPU-MLIR 1.23
ORACLE = Path(__file__).parent / "fixtures" / "tpu_mlir_flags" / "mtcnn_pnet"
ORACLE_CASES = {"cali_table_default": [], "cali_table_bins1024": ["--histogram_bin_num", "1024"],
                "cali_table_tune_list": ["--tune_list", "{tune_list}"],
                "cali_table_tune_steps5": ["--debug_cmd", "tune_steps=5"],
                "cali_table_dbg_p9999": ["--debug_cmd", "use_percentile9999"]}


@pytest.mark.zoo
@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_flags_equal_tpu_mlir(case, tmp_path, capsys, zoo):
    """``run_calibration.py`` 1.23 with each flag on PNet, 8 images (commands in meta.json): the same tensors, values
    within 2e-6 relative (float32 convolutions of two libraries), the same header lines."""
    from qsens.zoo import zoo_path

    lst = tmp_path / "tune_list.txt"
    lst.write_text("".join(f"{zoo_path('images100') / n}\n" for n in (ORACLE / "tune_list.txt").read_text().split()))
    out = tmp_path / case
    extra = [a.format(tune_list=lst) for a in ORACLE_CASES[case]]
    rc, _, err = run_cli(["calibrate", _pnet(), *PNET_FLAGS, "--pixel_format", "rgb", "--dataset", _images(),
                          "--input_num", "8", "--tune_num", "5", "-q", "-o", str(out), *extra], capsys)
    assert rc == 0, err
    ours, theirs = _body(out), _body(ORACLE / case)
    assert list(ours) == list(theirs)
    for t in theirs:
        for x, y in zip(ours[t], theirs[t]):
            assert abs(x - y) <= 2e-6 * max(abs(y), 1e-3), (case, t, ours[t], theirs[t])
    drop = ("# mlir", "# genetated time")
    assert [h for h in _header(out) if not h.startswith(drop)] == [h for h in _header(ORACLE / case) if not h.startswith(drop)]
    if case != "cali_table_default":  # each flag really moves some threshold (TPU-MLIR's and qsens's alike)
        assert any(abs(ours[t][0] - theirs_d[0]) > 1e-4 for t, theirs_d in _body(ORACLE / "cali_table_default").items())
