"""``qsens.calibrate`` and ``qsens calibrate`` (issue "Calibration", items 2 and 4).

* EfficientNet-Lite0 on real images: the KL table covers every canonical tensor in canonical order; v1
  histograms equal a NumPy recount of the raw activations (from ``to_jax`` with taps); the SimpleTuner only
  raises KL thresholds; MAX = abs max; percentile <= max.
* The CLI end to end on a generated model and tiny generated datasets: the tables written, parsed by the
  independent reader of ``tests/tpu_mlir_parser.py``, reproducible bytes under ``SOURCE_DATE_EPOCH``, ``--hist v2``.
* Bad inputs: exit 2 with one ``qsens: error:`` line naming the file (no traceback), ``--input_num`` too large,
  a table naming unknown tensors, NaN activations.
"""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from onnx import helper

from qsens.cli import main
from qsens.errors import TableError
from qsens.onnx import to_jax
from tests.onnx_builders import conv_bn_relu_model, init, make_model, vi
from tests.tpu_mlir_parser import cpp_import, python_parse

METHODS = ("max", "percentile9999", "kl")


# ------------------------------------------------------------------------------------------ Lite0, real images
@pytest.fixture(scope="module")
def lite0(zoo):
    from qsens.calibrate import calibrate
    from qsens.data.dataset import select_files
    from qsens.pipeline import load_inputs, make_preprocess, preset_for_model

    path = str(zoo / "efficientnet_lite0.onnx")
    fn, params = to_jax(path)
    g = fn.graph
    pp = make_preprocess(g, preset=preset_for_model(path))
    files = select_files(dataset=str(zoo / "images100"), input_num=16)
    cal = calibrate(fn.model, files, pp, methods=("kl", "max", "percentile9999"), hist="v1", tune_num=5,
                    progress=False)
    x = load_inputs(files, g, pp)
    # the activations the calibration saw: the same per-op executables (qsens.engine.Engine) at the same batch.
    # (A whole-graph jit or the eager path rounds differently in the last bits: XLA fuses differently, which
    # moves values across bin edges.)  Recounted in NCHW: the statistics do not depend on the element order.
    from qsens.engine import DEFAULT_CHUNK, Engine

    e = Engine(fn.model, DEFAULT_CHUNK)
    parts: dict[str, list] = {t: [] for t in g.tensors}
    for s0 in range(0, 16, DEFAULT_CHUNK):
        chunk = {k: v[s0 : s0 + DEFAULT_CHUNK] for k, v in x.items()}
        k = next(iter(chunk.values())).shape[0]
        if k < DEFAULT_CHUNK:
            chunk = {n: np.concatenate([v, np.repeat(v[-1:], DEFAULT_CHUNK - k, 0)]) for n, v in chunk.items()}
        env = e.run(e.input_env(chunk), keep=tuple(g.tensors))
        for t in g.tensors:
            parts[t].append(np.asarray(e.to_nchw(t, env[t]), np.float32)[:k])
    acts = {t: np.concatenate(v) for t, v in parts.items()}
    assert jax is not None
    return dict(path=path, g=g, cal=cal, acts=acts)


@pytest.mark.zoo
def test_lite0_kl_table_covers_canonical_tensors(lite0, tmp_path):
    from qsens.calibrate import write_tables

    g, cal = lite0["g"], lite0["cal"]
    assert cal.tensors == tuple(g.tensors)
    out = str(tmp_path / "cali_table")
    written = write_tables(cal, out, main_method="kl", mlir=lite0["path"], write_method_tables=False)
    assert written == [out]
    headers, rows = python_parse(out)
    assert list(rows) == list(g.tensors)  # every canonical tensor, canonical order, nothing else
    # TPU-MLIR 1.23 run_calibration's header (checked with the real tool): no method line, tune number always
    assert not any(h.startswith("# quantization threshold calculation method") for h in headers)
    assert "# sample number: 16" in headers and "# tune number: 5" in headers
    assert list(cpp_import(out)["int8"]) == list(g.tensors)
    for t in g.tensors:
        th, mn, mx = rows[t]
        assert th == pytest.approx(cal.tuned["kl"][t], abs=5e-8)
        assert (mn, mx) == pytest.approx((cal.stats[t].min, cal.stats[t].max), abs=5e-8)
        assert 0 < th <= cal.stats[t].abs_max + 1e-6


@pytest.mark.zoo
def test_lite0_histograms_equal_numpy_recount(lite0):
    """v1 histograms == ``np.bincount(floor(|a|/width + 0.5))`` over the non-zero activations (float32)."""
    g, cal, acts = lite0["g"], lite0["cal"], lite0["acts"]
    # every tensor, which includes the input, ReLU6 (uint8-range) outputs, signed Conv / Add outputs, AvgPool,
    # the Reshape copy and the logits
    assert {g.op(t).type for t in g.tensors} == {"Input", "Conv", "Add", "AvgPool", "Reshape", "MatMul"}
    for t in g.tensors:
        r = cal.stats[t]
        a = acts[t]
        assert a.shape[0] == 16
        absmax = np.float32(np.abs(a).max())
        assert np.float32(r.abs_max) == absmax, t
        width = absmax / np.float32(2047)
        assert np.float32(r.width) == width, t
        v = np.abs(a).ravel()
        v = v[v != 0]
        k = np.floor(v / width + np.float32(0.5)).astype(np.int64)  # float32 arithmetic
        want = np.bincount(k, minlength=2048)
        assert want.size == 2048  # k <= 2047 because width is abs_max/2047
        np.testing.assert_array_equal(r.histogram, want, err_msg=t)
        assert r.histogram.sum() == np.count_nonzero(a)


@pytest.mark.zoo
def test_lite0_tuner_max_percentile(lite0):
    from qsens.calibrate import round_table

    g, cal, acts = lite0["g"], lite0["cal"], lite0["acts"]
    raised = 0
    for t in g.tensors:
        r = cal.stats[t]
        amax = float(np.abs(acts[t]).max())
        # MAX threshold == abs max of the activations (untuned; MAX is never tuned)
        assert cal.untuned["max"][t] == amax, t
        assert cal.tuned["max"][t] == round_table(amax)
        # percentile <= max (thresholds and the signed tails)
        assert cal.untuned["percentile9999"][t] <= amax, t
        assert r.min <= r.p99_min and r.p99_max <= r.max
        # SimpleTuner: KL thresholds can only grow (from the %.7f value it reads back)
        before = round_table(cal.untuned["kl"][t])
        assert cal.tuned["kl"][t] >= before, t
        assert cal.tuned["kl"][t] <= amax * (1 + 1e-6), t
        raised += cal.tuned["kl"][t] > before
    assert raised >= 1
    print(f"\nLite0: tuner raised {raised} of {len(g.tensors)} KL thresholds")


# ------------------------------------------------------------------------------------------ CLI, generated model
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A generated model, a tiny image dataset and a tiny .npy dataset."""
    d = tmp_path_factory.mktemp("cli")
    model = d / "net.onnx"
    model.write_bytes(conv_bn_relu_model(seed=3).SerializeToString())
    rng = np.random.default_rng(0)
    imgs = d / "imgs"
    imgs.mkdir()
    for i in range(5):
        assert cv2.imwrite(str(imgs / f"im{i}.png"), rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8))
    npys = d / "npys"
    npys.mkdir()
    for i in range(4):
        np.save(npys / f"s{i}.npy", rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    fn, _ = to_jax(str(model))
    return dict(dir=d, model=str(model), imgs=str(imgs), npys=str(npys), tensors=list(fn.graph.tensors))


def run_cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *names):
    assert rc == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qsens: error: "), err
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def table_files(out):
    return [out] + [f"{out}_{m}{s}" for m in METHODS for s in (".1", "_tune")]


def test_cli_calibrate_end_to_end(work, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    out1 = tmp_path / "a" / "cali_table"
    args = ["calibrate", work["model"], "--dataset", work["imgs"], "--methods", "max,percentile9999,kl",
            "--tune_num", "2", "--quiet"]
    # run 1: a real process (entry point `python -m qsens`)
    p = subprocess.run([sys.executable, "-m", "qsens", *args, "-o", str(out1)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "calibrated" in p.stdout and "Traceback" not in p.stderr
    for f in table_files(str(out1)):
        assert os.path.isfile(f), f
        headers, rows = python_parse(f)
        assert list(rows) == work["tensors"], f
        imported = cpp_import(f)["int8"]
        assert {k: list(v) for k, v in imported.items()} == rows, f
        assert "# genetated time: 2023-11-14 22:13:20" in headers
        assert "# sample number: 5" in headers
        for th, mn, mx in rows.values():
            assert th > 0 and mn <= mx
    h_main = python_parse(str(out1))[0]
    assert "# tune number: 2" in h_main and h_main[0].startswith("# mlir version: ") and "cali version" not in h_main[0]
    assert not any(h.startswith("# tune number") for h in python_parse(f"{out1}_max.1")[0])  # .1: untuned
    _, mx = python_parse(f"{out1}_max_tune")
    _, p99 = python_parse(f"{out1}_percentile9999_tune")
    assert all(p99[t][0] <= mx[t][0] for t in mx)
    _, kl1 = python_parse(f"{out1}_kl.1")
    _, klt = python_parse(f"{out1}_kl_tune")
    assert python_parse(str(out1))[1] == klt
    assert all(klt[t][0] >= kl1[t][0] for t in kl1)

    # run 2 (in-process): byte-identical tables
    out2 = tmp_path / "b" / "cali_table"
    rc, out, err = run_cli([*args, "-o", out2], capsys)
    assert rc == 0, err
    for f1, f2 in zip(table_files(str(out1)), table_files(str(out2))):
        b1, b2 = open(f1, "rb").read(), open(f2, "rb").read()
        assert b1 == b2, (f1, f2)

    # --hist v2 on .npy samples: works, MAX (histogram-independent) agrees with a v1 run on the same samples
    out3, out4 = tmp_path / "c" / "t", tmp_path / "d" / "t"
    for o, h in ((out3, "v2"), (out4, "v1")):
        rc, out, err = run_cli(["calibrate", work["model"], "--dataset", work["npys"], "--methods", "max,kl",
                                "--hist", h, "--tune_num", "0", "-q", "-o", o], capsys)
        assert rc == 0, err
        assert f"({h} histograms" in out
    _, v2 = python_parse(f"{out3}_max.1")
    _, v1 = python_parse(f"{out4}_max.1")
    assert list(v2) == work["tensors"] and v2 == v1
    _, kl2 = python_parse(str(out3))
    assert all(0 < kl2[t][0] <= v2[t][0] for t in kl2)


# ------------------------------------------------------------------------------------------ bad inputs
def _calibrate(work, dataset, capsys, out=None):
    out = work["dir"] / "never_written" if out is None else out
    return run_cli(["calibrate", work["model"], "--dataset", dataset, "--tune_num", "0", "-q", "-o", out], capsys)


def test_bad_npz_keys_and_shapes(work, tmp_path, capsys):
    d1 = tmp_path / "keys"
    d1.mkdir()
    bad = d1 / "two.npz"
    np.savez(bad, a=np.zeros((1, 3, 8, 8), np.float32), b=np.zeros((1, 3, 8, 8), np.float32))
    line = assert_one_line_error(*_calibrate(work, d1, capsys)[::2], bad)
    assert "keys" in line
    d2 = tmp_path / "shapes"
    d2.mkdir()
    bad = d2 / "s.npz"
    np.savez(bad, x=np.zeros((1, 3, 5, 5), np.float32))
    line = assert_one_line_error(*_calibrate(work, d2, capsys)[::2], bad)
    assert "[1, 3, 5, 5]" in line and "[1, 3, 8, 8]" in line
    assert not os.path.exists(work["dir"] / "never_written")


def test_unreadable_image_empty_dir_mixed_kinds(work, tmp_path, capsys):
    d = tmp_path / "corrupt"
    d.mkdir()
    cv2.imwrite(str(d / "good.png"), np.zeros((8, 8, 3), np.uint8))
    (d / "broken.jpg").write_bytes(b"this is not a jpeg")
    assert_one_line_error(*_calibrate(work, d, capsys)[::2], d / "broken.jpg")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no samples here")
    assert_one_line_error(*_calibrate(work, empty, capsys)[::2], empty)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    cv2.imwrite(str(mixed / "a.png"), np.zeros((8, 8, 3), np.uint8))
    np.save(mixed / "b.npy", np.zeros((1, 3, 8, 8), np.float32))
    line = assert_one_line_error(*_calibrate(work, mixed, capsys)[::2], mixed)
    assert "a.png" in line and "b.npy" in line


def test_input_num_larger_than_available_warns(work, tmp_path):
    out = tmp_path / "t"
    p = subprocess.run([sys.executable, "-m", "qsens", "calibrate", work["model"], "--dataset", work["npys"],
                        "--input_num", "50", "--tune_num", "0", "-q", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "asked for 50 samples but only 4 found; using all 4" in p.stderr
    assert "Traceback" not in p.stderr
    assert "# sample number: 4" in python_parse(str(out))[0]


def test_table_with_unknown_tensors(work, tmp_path, capsys):
    from qsens.quant.mixed import plan_from_table
    from qsens.tables import CaliTable, read_cali_table

    out = tmp_path / "good"
    rc, _, err = _calibrate(work, work["npys"], capsys, out)
    assert rc == 0, err
    good = read_cali_table(out)
    entries = dict(good.entries)
    entries["ghost_tensor"] = (1.0, -1.0, 1.0)
    entries["phantom_Conv"] = (2.0, 0.0, 2.0)
    bad_path = tmp_path / "bad_table"
    bad_path.write_text(open(out).read() + "ghost_tensor 1.0000000 -1.0000000 1.0000000\n"
                        "phantom_Conv 2.0000000 0.0000000 2.0000000\n")
    fn, _ = to_jax(work["model"])
    with pytest.raises(TableError, match="ghost_tensor") as ei:
        plan_from_table(fn.graph, CaliTable(entries))
    assert "phantom_Conv" in str(ei.value) and "not in the model: 2" in str(ei.value)

    rc, _, err = run_cli(["search", work["model"], "--dataset", work["npys"], "--calibration_table", bad_path,
                          "--input_num", "2", "--inference_num", "2", "--out_dir", tmp_path / "s", "-q"], capsys)
    line = assert_one_line_error(rc, err, bad_path, "ghost_tensor", "phantom_Conv")
    assert "not in the model" in line


def log_model():
    """x -> Log -> Conv 1x1: a negative input pixel gives NaN in the Log output."""
    w = np.random.default_rng(0).standard_normal((2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Log", ["x"], ["l"]), helper.make_node("Conv", ["l", "w"], ["y"])]
    return make_model(nodes, [vi("x", ["N", 3, 4, 4])], [vi("y", ["N", 2, 4, 4])], [init("w", w)])


def test_nan_activations(work, tmp_path, capsys):
    from qsens.data.dataset import select_files

    model = tmp_path / "log.onnx"
    model.write_bytes(log_model().SerializeToString())
    d = tmp_path / "pos"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        np.save(d / f"p{i}.npy", rng.uniform(0.5, 2.0, (1, 3, 4, 4)).astype(np.float32))
    neg = np.load(d / "p3.npy")
    neg[0, 1, 2, 2] = -1.0
    np.save(d / "p3.npy", neg)
    order = select_files(dataset=str(d))
    k = order.index(str(d / "p3.npy"))
    log_t = next(op.name for op in to_jax(str(model))[0].graph.ops if op.type == "Log")
    rc, _, err = run_cli(["calibrate", model, "--dataset", d, "--tune_num", "0", "-q", "-o", tmp_path / "t"], capsys)
    line = assert_one_line_error(rc, err, f"'{log_t}'", f"sample {k}")
    assert "NaN" in line

    # a NaN in the input sample itself: named as the input tensor
    d2 = tmp_path / "nan_in"
    d2.mkdir()
    for i in range(3):
        a = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        if i == 2:
            a[0, 0, 0, 0] = np.nan
        np.save(d2 / f"n{i}.npy", a)
    k = select_files(dataset=str(d2)).index(str(d2 / "n2.npy"))
    rc, _, err = _calibrate(work, d2, capsys)
    assert_one_line_error(rc, err, "'x'", f"sample {k}", "NaN")


@pytest.mark.parametrize("tune_list", [False, True])
def test_streamed_tuner_activations_give_the_same_tables(tmp_path, tune_list):
    """``stream_tune`` (what ``qsens search --max_memory`` uses): the tuner's activations recomputed op by op from
    the tune batches instead of kept for every tensor give the same tuned tables, bit for bit; 5 tune samples in
    batches of 4 (two batches, the second padded), with and without a separate --tune_list."""
    try:
        import search_models as sm
    except ImportError:  # pragma: no cover
        from tests import search_models as sm
    from qsens.calibrate import TuneStream, calibrate_multi

    fn, _ = to_jax(sm.save(sm.resnet_ish(blocks=3, seed=2), tmp_path / "rn.onnx"))
    sm.npy_dataset(tmp_path / "data", n=9, seed=3)
    files = sorted(str(p) for p in (tmp_path / "data").glob("*.npy"))
    specs = [(("max", "percentile9999", "kl"), "v1", ("max", "percentile9999", "kl")), (("kl",), "v2", ("kl",))]
    kw = {"tune_num": 5, "batch": 4, "progress": False, "tune_files": files[3:9] if tune_list else None}
    kept = calibrate_multi(fn.model, files, None, specs=specs, **kw)
    streamed = calibrate_multi(fn.model, files, None, specs=specs, stream_tune=True, **kw)
    assert kept[1].tune_num == streamed[1].tune_num == (6 if tune_list else 5)
    for a, b in zip(kept, streamed):
        assert a.tuned == b.tuned and a.untuned == b.untuned
    assert any(kept[1].tuned["kl"][t] != kept[1].untuned["kl"][t] for t in kept[1].tensors)  # the tuner moved some
    # the stream holds one op's live set, never every tensor
    st = TuneStream(fn.model, files, None, 5, batch=4)
    g = st.graph
    for op in g.ops[1:]:
        assert st[op.outputs[0]].shape[0] == 5 and all(st[t].shape[0] == 5 for t in op.inputs)
        assert len(st.envs) == 2 and max(len(e) for e in st.envs) <= 4


@pytest.mark.parametrize("loudest", ["first", "input", "last", None])
def test_v1_beside_v2_equals_v1_alone_with_the_second_pass_cut_short(tmp_path, monkeypatch, loudest):
    """``qsens search``'s calibration (run_sensitive_layer's v1 statistics beside run_calibration's v2 ones): the v1
    histograms a v2 state already holds (range never grew) are adopted, pass 2 runs the forward only up to the last
    op whose tensor still needs one, or not at all, and the activations pass 1 kept (``keep_bytes``) are histogrammed
    from memory; every v1 statistic equals a v1 calibration alone, bit for bit.  ``loudest``: the sample scaled x10 (first: every range is set by sample 0, pass 2 is skipped; input: the same,
    but one value of the last sample grows the input's range, so pass 2 runs the Input op only; last: every range
    grows, pass 2 runs whole; None: the data decide)."""
    try:
        import search_models as sm
    except ImportError:  # pragma: no cover
        from tests import search_models as sm
    from qsens import calibrate as C

    fn, _ = to_jax(sm.save(sm.resnet_ish(blocks=3, seed=2), tmp_path / "rn.onnx"))
    sm.npy_dataset(tmp_path / "data", n=9, seed=3)
    files = sorted(str(p) for p in (tmp_path / "data").glob("*.npy"))
    if loudest is not None:
        f = files[-1 if loudest == "last" else 0]
        np.save(f, np.load(f) * np.float32(10))
    if loudest == "input":
        x = np.load(files[-1])
        x.flat[0] = np.abs(np.load(files[0])).max() * np.float32(1.01)
        np.save(files[-1], x)
    stops = []
    run = C.Engine.run
    monkeypatch.setattr(C.Engine, "run", lambda self, env, *a, **k: (stops.append(k.get("stop")), run(self, env, *a, **k))[1])
    alone, _ = C.collect_statistics(fn.model, files, None, methods=METHODS, hist="v1", batch=4, progress=False)
    n_ops = len(fn.graph.ops)
    assert stops == [None] * 3 + [n_ops] * 3  # alone: two whole passes
    # keep_bytes: nothing; the last three tensors (Gemm 7, Flatten 6, GAP 6 floats per sample); everything
    for keep, cap in (("none", 0), ("tail", len(files) * 4 * (7 + 6 + 6)), ("all", 2**20)):
        stops.clear()
        (v1, v2), _ = C.collect_statistics_multi(fn.model, files, None, specs=[(METHODS, "v1"), (("kl",), "v2")],
                                                 batch=4, progress=False, keep_bytes=cap)
        assert stops[:3] == [None] * 3
        pass2 = stops[3:]  # three batches in pass 1
        for t in fn.graph.tensors:
            a, b = v1[t], alone[t]
            np.testing.assert_array_equal(a.histogram, b.histogram)
            assert (a.min, a.max, a.abs_max, a.kl, a.p99, a.p99_min, a.p99_max, a.width) == (
                b.min, b.max, b.abs_max, b.kl, b.p99, b.p99_min, b.p99_max, b.width), (keep, t)
        if loudest == "first" or keep == "all":
            assert pass2 == [], keep
        elif loudest == "input":
            assert pass2 == [1] * 3, keep
        elif loudest == "last":
            assert pass2 == [n_ops - 3 if keep == "tail" else n_ops] * 3, keep
        else:
            assert len(pass2) == 3 and all(s == pass2[0] for s in pass2), keep


@pytest.mark.parametrize("loudest_first", [False, True])
def test_tuner_runs_share_their_distances_and_change_no_table(tmp_path, monkeypatch, loudest_first):
    """``calibrate_multi``'s tuner runs (every method of the v1 tables, KL of the v2 base table) share one memo of
    distances per (op, grid): each table equals its spec calibrated alone, bit for bit, and a grid another run
    evaluated is not run again (with the loudest sample first, v1's and v2's KL histograms are equal, so are
    their grids: the v2 run evaluates nothing)."""
    try:
        import search_models as sm
    except ImportError:  # pragma: no cover
        from tests import search_models as sm
    from qsens import calibrate as C

    fn, _ = to_jax(sm.save(sm.resnet_ish(blocks=3, seed=2), tmp_path / "rn.onnx"))
    sm.npy_dataset(tmp_path / "data", n=9, seed=3)
    files = sorted(str(p) for p in (tmp_path / "data").glob("*.npy"))
    if loudest_first:
        np.save(files[0], np.load(files[0]) * np.float32(10))
    calls = [0]
    fq = C.fake_quant_rows
    monkeypatch.setattr(C, "fake_quant_rows", lambda *a: (calls.__setitem__(0, calls[0] + 1), fq(*a))[1])
    specs = [(METHODS, "v1", METHODS), (("kl",), "v2", ("kl",))]
    kw = {"tune_num": 5, "batch": 4, "progress": False}
    multi = C.calibrate_multi(fn.model, files, None, specs=specs, **kw)
    n_multi, calls[0] = calls[0], 0
    alone = [C.calibrate_multi(fn.model, files, None, specs=[sp], **kw)[0] for sp in specs]
    n_alone = calls[0]
    for a, b in zip(multi, alone):
        assert a.tuned == b.tuned and a.untuned == b.untuned
    assert any(multi[1].tuned["kl"][t] != multi[1].untuned["kl"][t] for t in multi[1].tensors)  # the tuner moved some
    assert 0 < n_multi <= n_alone
    # the memo is keyed by the grid: a table with other grids (half the thresholds) reads none of another's
    acts = C.collect_statistics(fn.model, files, None, methods=("max",), hist="v2", batch=4, progress=False,
                                tune_num=5)[1]
    amax = {t: multi[0].stats[t].abs_max for t in multi[0].tensors}
    kl = multi[0].tuned["kl"]
    half = {t: C.round_table(v / 2) for t, v in kl.items()}
    memo: dict = {}
    pair = [C.tune(fn.model, acts, tab, amax, batch=4, memo=memo) for tab in (kl, half)]
    assert pair == [C.tune(fn.model, acts, tab, amax, batch=4) for tab in (kl, half)]
    assert pair[1] != half  # the tuner moved some
    if loudest_first:
        assert n_multi < n_alone
        assert multi[0].untuned["kl"] == multi[1].untuned["kl"]
        calls[0] = 0
        C.calibrate_multi(fn.model, files, None, specs=specs[:1], **kw)
        assert calls[0] == n_multi  # the v2 run added nothing


def test_pass_one_keeper_keeps_what_v2_may_not_hold(tmp_path):
    """The keeper's choices (speed only; the tables never depend on them): tensors without a static bound are planned
    last first within the cap; a ReLU6 output is let go at its first batch when its v2 range is already 6 (it can
    never grow), kept otherwise while the cap allows; ``take`` hands back only needed tensors seen whole."""
    import onnx

    from qsens.calib.histogram import HistState
    from qsens.calibrate import PassOneKeeper

    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_model(relu="Clip"), str(path))
    g = to_jax(str(path))[0].graph
    clip = next(op.outputs[0] for op in g.ops if op.attr("relu_limit", -1.0) == 6.0)
    per = {t: int(np.prod(g.tensor_shape(t)[1:])) * 4 * 2 for t in g.tensors}  # bytes of 2 samples
    unbounded = [t for t in g.tensors if t != clip]
    hist = lambda th, grown=False: HistState(np.zeros(2048, np.int64), np.float32(th), np.float32(th) / 2047, grown)  # noqa: E731
    k = PassOneKeeper(g, 2, sum(per[t] for t in unbounded))
    assert set(k.kept) == set(unbounded) and k.left == 0
    for t in g.tensors:
        k.offer(t, np.ones((2, 3), np.float32), 0, hist(6.0))
    assert clip not in k.kept  # at its bound in the first batch
    assert set(k.take(set(g.tensors) - {"x"})) == set(unbounded) - {"x"}
    for th, grown in ((5.0, False), (6.0, True)):  # below its bound, or grown on the way to it: kept
        k = PassOneKeeper(g, 2, sum(per.values()))
        k.offer(clip, np.ones((1, 3), np.float32), 0, hist(th, grown))
        assert set(k.take({clip})) == set()  # one sample of two: not whole
        k = PassOneKeeper(g, 2, sum(per.values()))
        k.offer(clip, np.ones((2, 3), np.float32), 0, hist(th, grown))
        assert list(k.take({clip})) == [clip]
    k = PassOneKeeper(g, 2, per[g.tensors[-1]] + per[g.tensors[-2]])  # room for the last two only
    assert set(k.kept) == set(g.tensors[-2:])
    k.offer(clip, np.ones((2, 3), np.float32), 0, hist(5.0))
    assert clip not in k.kept  # no room left


def test_relu_bound_of_fused_and_standalone_relus():
    """``Op.relu_bound``, shared by the pass-1 keeper and the accuracy aids: a fused or standalone bounded ReLU
    gives its limit, an unbounded or absent one None."""
    from qsens.onnx.ir import Op

    def op(t, **attrs):
        return Op("y", t, ("x",), ("y",), attrs=tuple(sorted(attrs.items())))

    assert op("Conv", do_relu=True, relu_limit=6.0).relu_bound() == 6.0
    assert op("Relu", relu_limit=6.0).relu_bound() == 6.0
    assert op("Conv", do_relu=True, relu_limit=-1.0).relu_bound() is None
    assert op("Conv", do_relu=False, relu_limit=6.0).relu_bound() is None
    assert op("Relu", relu_limit=-1.0).relu_bound() is None
    assert op("Add").relu_bound() is None


def test_statistics_workers_raise_the_earliest_submitted_failure():
    """Two statistics threads: a later call that fails first on the other thread does not hide an earlier one
    (the inline order's error is the one the user sees: the input tensor before what its NaN reaches)."""
    import threading
    import time as _time

    from qsens.calibrate import Workers

    order, release = [], threading.Event()

    def slow_fail():
        release.wait(5)
        _time.sleep(0.05)
        raise ValueError("first submitted")

    def fast_fail():
        release.set()
        raise ValueError("second submitted")

    with pytest.raises(ValueError, match="^first submitted$"):
        with Workers(2) as w:
            w.submit(0, slow_fail)
            w.submit(1, fast_fail)
    with Workers(2) as w:  # per-thread FIFO, every call done on exit
        for i in range(20):
            w.submit(i % 2, order.append, i)
    assert sorted(order) == list(range(20)) and [i for i in order if i % 2 == 0] == list(range(0, 20, 2))
