"""TPU-MLIR's accuracy aids (``run_calibration.py --we --bc --sq``; docs/accuracy_aids.md).

The TPU-MLIR 1.23 fixtures (``tests/fixtures/tpu_mlir/gen_we``: its Top weights after ``--we`` and after ``--bc``,
the bias-correction log) come from ``reference/tpu_mlir/run.py gen_we.onnx --cali_args=...`` (meta.json).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

import qsens
from qsens.calib.aids import (
    equalization_pairs,
    equalize_pair,
    lns_needing_mul,
    smooth_ops,
    smoothquant_scale,
    weight_equalization,
)
from qsens.search.biascorr import bc_decision
from tests.cli_util import one_line_error, run_cli

FX = Path(__file__).parent / "fixtures" / "tpu_mlir" / "gen_we"
GEN_WE = str(FX / "gen_we.onnx")
PP = dict(resize_dims=[16, 16], mean=[127.5] * 3, scale=[0.0078125] * 3, pixel_format="rgb")
PP_FLAGS = ["--resize_dims", "16,16", "--mean", "127.5,127.5,127.5", "--scale", "0.0078125,0.0078125,0.0078125",
            "--pixel_format", "rgb"]


def _meta():
    return json.loads((FX / "meta.json").read_text())


def _out(fn, params, x):
    return np.asarray(next(iter(fn(params, x).values())), np.float64)


# ----------------------------------------------------------------------------------------------------- --we
def test_we_pairs_and_weights_are_tpu_mlirs_bit_for_bit():
    fn, params = qsens.to_jax(GEN_WE)
    g = fn.graph
    pairs = equalization_pairs(g)
    logged = [ln.split(": ", 1)[1].split(" Groups")[0] for ln in _meta()["runs"]["we_log"] if "Iter: 1" in ln]
    assert [f"{p['first']} --- {p['second']}" for p in pairs] == logged
    assert [p["bounded_relu"] for p in pairs] == [False, True, False, False]  # clip10 is Conv + ReLU6
    new, rec = weight_equalization(g, params)
    assert [p["iterations"] for p in rec["pairs"]] == [2, 2, 2, 2]  # TPU-MLIR logs Iter 1 and 2 for each
    ref = np.load(FX / "we_weights_after.npz")
    changed = 0
    for k in ref.files:
        ours = np.asarray(new[k]).reshape(ref[k].shape)
        assert np.array_equal(ours, ref[k]), k
        changed += not np.array_equal(np.asarray(params[k]).reshape(ref[k].shape), ref[k])
    assert changed == 9  # 4 pairs: 4 first filters + 4 biases + the last pair's second filter (w11 and w16 twice)


def test_equalize_pair_scales_by_hand():
    # first conv: 2 output channels with ranges 4 and 0.25; second conv (1 output) input ranges 1 and 4
    w1 = np.array([4.0, -1, 0.25, 0.1], np.float32).reshape(2, 2, 1, 1)
    b1 = np.array([2.0, 1.0], np.float32)
    w2 = np.array([1.0, 4.0], np.float32).reshape(1, 2, 1, 1)
    n1, nb, n2, s = equalize_pair(w1, b1, w2)
    # s = r1 / sqrt(r1 r2): 4 / sqrt(4) = 2 and 0.25 / sqrt(1) = 0.25
    np.testing.assert_allclose(s, [2.0, 0.25])
    np.testing.assert_allclose(n1.ravel(), [2.0, -0.5, 1.0, 0.4])
    np.testing.assert_allclose(nb, [1.0, 4.0])
    np.testing.assert_allclose(n2.ravel(), [2.0, 1.0])  # both ranges now sqrt(r1 r2)
    # a dead channel (range < 1e-6) keeps s = 1 (0/0 -> nan -> 1)
    w1[1] = 1e-7
    assert equalize_pair(w1, b1, w2)[3][1] == 1.0


def test_we_keeps_the_float_model_without_bounded_relus():
    """ReLU, PRelu and no activation between the convs (one of them depthwise): the float model is unchanged;
    TPU-MLIR's rule across the ReLU6 (bound left at 6) changes it."""
    fn, params = qsens.to_jax(GEN_WE)
    x = np.random.default_rng(0).normal(0, 1, (4, 3, 16, 16)).astype(np.float32)
    ref = _out(fn, params, x)
    new, rec = weight_equalization(fn.graph, params, relu6="skip")
    assert [p["first"] for p in rec["pairs"]] == ["relu4_Relu", "conv13_Conv", "conv18_Conv"]
    assert rec["pairs"][0]["groups"] == 8  # the second conv is depthwise
    assert max(p["scale_max"] / p["scale_min"] for p in rec["pairs"]) > 5  # real rescaling happened (7.7)
    assert np.abs(_out(fn, new, x) - ref).max() <= 1e-4 * np.abs(ref).max()
    tm, _ = weight_equalization(fn.graph, params, relu6="tpu_mlir")
    assert np.abs(_out(fn, tm, x) - ref).max() > 1e-2 * np.abs(ref).max()


def test_we_on_lite0_and_the_written_onnx(tmp_path):
    """Lite0: every Conv -> Conv pair TPU-MLIR would equalize crosses a ReLU6 (its linear 1x1 pairs are merged), so
    the float-preserving rule has nothing to do and TPU-MLIR's rule wrecks the float model; the written ONNX gives
    back the equalized weights, merged convolutions included."""
    from qsens.onnx.rewrite import write_edited_onnx
    from qsens.zoo import zoo_path

    path = zoo_path("efficientnet_lite0.onnx")
    if not path.exists():
        pytest.skip("zoo not built (qsens zoo)")
    shapes = {"input": [1, 3, 224, 224]}
    fn, params = qsens.to_jax(str(path), shapes)
    g = fn.graph
    assert equalization_pairs(g, "skip") == []
    assert smooth_ops(g, params) == []  # SmoothQuant touches only LayerNorm / Mul -> MatMul
    new, rec = weight_equalization(g, params, relu6="skip")
    assert rec["pairs"] == [] and all(new[k] is params[k] for k in params)
    new, rec = weight_equalization(g, params)
    assert len(rec["pairs"]) == 32 and all(p["bounded_relu"] for p in rec["pairs"])
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 224, 224)).astype(np.float32)
    a, b = _out(fn, params, x).ravel(), _out(fn, new, x).ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 0.5  # TPU-MLIR's --we on Lite0
    out = tmp_path / "lite0_we.onnx"
    w = write_edited_onnx(str(path), str(out), g, {k: np.asarray(v) for k, v in params.items()},
                          {k: np.asarray(v) for k, v in new.items()}, rec["edits"])
    assert "getitem_9_Conv_merge_filter_weight" in w["ops"] or any("getitem" in o for o in w["ops"])
    _, back = qsens.to_jax(str(out), shapes)
    for k in new:
        np.testing.assert_allclose(np.asarray(back[k]), np.asarray(new[k]), rtol=1e-5,
                                   atol=1e-6 * float(np.abs(np.asarray(new[k])).max()))
    src, dst = onnx.load(str(path)), onnx.load(str(out))
    assert [n.name for n in src.graph.node] == [n.name for n in dst.graph.node]


# ----------------------------------------------------------------------------------------------------- --bc
def test_bc_keep_revert_rule():
    """TPU-MLIR's rule on a constructed sequence of attempts (all-INT8 outputs cos 0.90)."""
    best_out, best_layer, kept = 0.90, None, []
    attempts = [  # (outputs cos, new layer cos)
        (0.91, 0.95),  # kept: outputs up, no earlier layer cos
        (0.905, 0.99),  # reverted: outputs below the best (0.91) -- but its layer cos 0.99 becomes the best
        (0.92, 0.98),  # reverted: outputs up, yet layer cos 0.98 < 0.99 (another layer's, of a reverted attempt)
        (0.92, 0.995),  # kept: outputs equal to the best (not below), layer cos above
        (0.93, 0.995),  # kept: equal layer cos is not below
    ]
    for o, lc in attempts:
        keep, best_out, best_layer = bc_decision(o, lc, best_out, best_layer)
        kept.append(keep)
    assert kept == [True, False, False, True, True]
    assert (best_out, best_layer) == (0.93, 0.995)


def test_bc_matches_tpu_mlir_on_gen_we(tmp_path):
    """Every attempt's old/new layer cos and outputs cos of TPU-MLIR 1.23's log, its decisions and its bias."""
    from qsens.data.dataset import select_files
    from qsens.pipeline import make_preprocess
    from qsens.search.aidjob import AidSettings, apply_aids
    from qsens.zoo import zoo_path

    ds = zoo_path("images100")
    if not ds.exists():
        pytest.skip("zoo not built (qsens zoo)")
    s = AidSettings(bc=True, bc_inference_num=10, expected_cos=0.99999, min_layer_cos=0.9999)
    res = apply_aids(GEN_WE, None, s, str(tmp_path / "bc.onnx"), cal_files=select_files(str(ds), input_num=20),
                     bc_files=select_files(str(ds), input_num=10), make_pp=lambda g: make_preprocess(g, **PP),
                     echo=lambda _: None)
    bc = res.record["bc"]
    log = _meta()["runs"]["bc_log"]
    assert f"int8 outputs_cos:{bc['all_int8_cos']:.6f} old" in log
    pat = re.compile(r"op:(\S+), old layer cos:([\d.]+), new layer cos:([\d.]+), new output cos:([\d.]+)")
    theirs = [pat.search(ln).groups() for ln in log if pat.search(ln)]
    assert len(theirs) == len(bc["attempts"]) == 7
    for a, (op, old, new, out) in zip(bc["attempts"], theirs):
        assert a["op"] == op
        assert abs(a["old_layer_cos"] - float(old)) < 2e-6 and abs(a["new_layer_cos"] - float(new)) < 2e-6
        assert abs(a["outputs_cos"] - float(out)) < 2e-6
    assert bc["applied"] == ["relu4_Relu"]
    ref = np.load(FX / "bc_weights_after.npz")
    for k in ref.files:  # only relu4_Relu's bias (w2) moved; qsens's mean differs in the last float bit
        np.testing.assert_allclose(res.params[k].reshape(ref[k].shape), ref[k], rtol=0, atol=1e-6)
    _, back = qsens.to_jax(str(tmp_path / "bc.onnx"))
    assert np.array_equal(np.asarray(back["w2"]), res.params["w2"])


# ----------------------------------------------------------------------------------------------------- --sq
def test_smoothquant_scales_by_hand():
    # x = [4, 1], W rows [1], [4]: alpha 0 gives s = 1 / wmax = [1, 0.25], x/s = [4, 4] and W*s = [1, 1] quantize
    # exactly (loss 0), and the first minimum wins
    s, info = smoothquant_scale([np.array([[4.0, 1.0]])], [np.array([[1.0], [4.0]])])
    np.testing.assert_allclose(s, [1.0, 0.25])
    assert info == {"loss": 0.0, "chosen": ("alpha", 0.0)}
    # x = [3, 1], W rows [1], [1]: with alpha < 1 the 1 is quantized on a grid of (3^(1-alpha))/127 (alpha 0:
    # round(42.33) = 42 -> 0.992126, loss (4 - 3.992126)^2 = 6.2e-5); alpha = 1 gives s = amax = [3, 1], x/s = [1, 1]
    s, info = smoothquant_scale([np.array([[3.0, 1.0]])], [np.array([[1.0], [1.0]])])
    np.testing.assert_allclose(s, [3.0, 1.0])
    assert info["chosen"][0] == "alpha" and info["chosen"][1] == pytest.approx(1.0) and info["loss"] < 1e-20


@pytest.mark.parametrize("net, smoothed, chosen", [
    ("gen_sq", ["layernormalization9_LayerNormalization", "mul16_Mul"], {"alpha"}),
    # the LayerNorm's users: a Reshape [1,16,8] -> [16,8] then a MatMul, and a MatMul; the Mul's: a Reshape back,
    # then a MatMul (TPU-MLIR's skip_reshape_like_users looks through them)
    # then a MatMul; both scales here come from the OS+ candidates (max(1, amax / (max(amax) * (k+1)/20)))
    ("gen_sq_reshape", ["layernormalization9_LayerNormalization", "mul18_Mul"], {"os+"}),
    # a BERT-style attention block: the LayerNorm, and the value projection (add22_Add: TPU-MLIR's MatMul + bias
    # merged under the Add's name) whose columns and bias are divided and the output projection's rows multiplied
    ("gen_attn", ["layernormalization9_LayerNormalization", "add22_Add"], None),
    # a post-LN LayerNorm feeding a MatMul and the residual Add: TPU-MLIR inserts Mul_after_<ln> (by ones) in front of
    # the MatMul and smooths it; qsens writes the same Mul into the aided ONNX (output Mul_after_<ln output>), its
    # weight <ln>_scaled_weight = 1 / s in both
    ("gen_sq_ln", ["Mul_after_layernormalization9_LayerNormalization"], None),
])
def test_smoothquant_matches_tpu_mlir_on_gen_sq(net, smoothed, chosen, tmp_path):
    """``--sq`` on a LayerNorm -> 2 MatMuls and a Mul -> MatMul net (``fixtures/tpu_mlir/gen_sq``; the same through
    Reshapes, ``gen_sq_reshape``): the same smoothed ops as TPU-MLIR 1.23's log, and every rewritten weight (the
    LayerNorm's gain and bias and the Mul's weight divided by s, the MatMuls' rows multiplied) equal to the Top
    weights its run_calibration --sq wrote, within float32 rounding of the activation maxima; the float model's
    outputs unchanged."""
    from qsens.data.dataset import select_files
    from qsens.pipeline import load_inputs, make_preprocess
    from qsens.search.aidjob import AidSettings, apply_aids
    from qsens.zoo import zoo_path

    ds = zoo_path("images100")
    if not ds.exists():
        pytest.skip("zoo not built (qsens zoo)")
    fx = Path(__file__).parent / "fixtures" / "tpu_mlir" / net
    meta = json.loads((fx / "meta.json").read_text())
    model = str(fx / f"{net}.onnx")
    fn, params = qsens.to_jax(model)
    logged = [ln.split(" ", 3)[3] for ln in meta["runs"]["sq_log"]]
    assert logged == smoothed
    if net != "gen_sq_ln":
        assert smooth_ops(fn.graph, params) == smoothed
    else:  # nothing to smooth before the Mul is inserted: the LayerNorm feeds an Add too
        assert smooth_ops(fn.graph, params) == [] and lns_needing_mul(fn.graph) == {
            "layernormalization9_LayerNormalization": ["relu12_Relu"]}  # the MatMul, its ReLU fused
    files = select_files(str(ds), input_num=20)
    res = apply_aids(model, None, AidSettings(sq=True), str(tmp_path / "sq.onnx"), cal_files=files, bc_files=[],
                     make_pp=lambda g: make_preprocess(g, **PP), echo=lambda _: None)
    assert res.record["sq"]["smooth_ops"] == smoothed  # TPU-MLIR's names, the inserted Mul's included
    ref = np.load(fx / "sq_weights_after.npz")
    # a bias TPU-MLIR merged into its MatMul keeps the ONNX Add's weight name there; qsens's key names the Add
    alias = {k.split("@")[0]: k for k in res.params if k.endswith("@fused_bias")}
    add_w = {n.output[0]: next(i for i in n.input if i in ref.files) for n in onnx.load(model).graph.node
             if n.op_type == "Add" and any(i in ref.files for i in n.input)}
    alias = {add_w[a]: k for a, k in alias.items() if a in add_w}
    changed = 0
    for k in ref.files:
        ours = np.asarray(res.params[alias.get(k, k)]).reshape(ref[k].shape)
        np.testing.assert_allclose(ours, ref[k], rtol=2e-6, atol=0, err_msg=k)
        before = params.get(alias.get(k, k))  # None: a weight TPU-MLIR created (the inserted Mul's)
        changed += before is None or not np.array_equal(np.asarray(before).reshape(ref[k].shape), ref[k])
    # LayerNorm gain + bias, Mul weight, the three MatMul weights; gen_attn: LayerNorm gain + bias, q / k / v / o
    # weights, v bias; gen_sq_ln: the inserted Mul's weight and the MatMul's
    assert changed == {"gen_attn": 7, "gen_sq_ln": 2}.get(net, 6)
    if chosen is not None:
        assert {r["chosen"][0] for r in res.record["sq"]["ops"].values()} == chosen
    # the float model is preserved: x/s @ (s W) = x @ W
    fn2, params2 = qsens.to_jax(str(tmp_path / "sq.onnx"))
    x = load_inputs(files[:4], fn.graph, make_preprocess(fn.graph, **PP))
    a, b = fn(params, x), fn2(params2, x)
    for k in a:
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=1e-4, atol=1e-5 * float(np.abs(a[k]).max()))


# ----------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("flags, needles", [
    (["--we", "--bc_inference_num", "0"], ["--bc_inference_num", ">= 1"]),
    (["--bc", "--min_layer_cos", "1.5"], ["--min_layer_cos", "[0, 1]"]),
    (["--we", "--calibration_table", "t.txt"], ["--calibration_table", "t.txt", "--save_model"]),
])
def test_aid_flag_errors(flags, needles, tmp_path, capsys):
    rc, _, err = run_cli(["search", GEN_WE, "--dataset", str(tmp_path), "--out_dir", str(tmp_path / "r"), *flags],
                         capsys)
    one_line_error(rc, err, *needles)


def test_we_relu6_choices(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(["calibrate", GEN_WE, "--we", "--we_relu6", "bound"], capsys)
    assert e.value.code == 2 and "--we_relu6" in capsys.readouterr().err


def test_calibrate_we_writes_the_aided_model(tmp_path, capsys):
    from qsens.zoo import zoo_path

    ds = zoo_path("images100")
    if not ds.exists():
        pytest.skip("zoo not built (qsens zoo)")
    model = tmp_path / "aided.onnx"
    rc, out, err = run_cli(["calibrate", GEN_WE, "--dataset", str(ds), "--input_num", "20", *PP_FLAGS, "--we",
                            "--save_model", str(model), "-o", str(tmp_path / "cali_table"), "-q"], capsys)
    assert rc == 0, err
    assert "weight equalization: 4 Conv pairs equalized" in out
    ref = np.load(FX / "we_weights_after.npz")
    _, params = qsens.to_jax(str(model))
    for k in ref.files:
        assert np.array_equal(np.asarray(params[k]).reshape(ref[k].shape), ref[k]), k
    rec = json.loads((tmp_path / "aided.aids.json").read_text())
    assert rec["aids"] == "we" and len(rec["we"]["pairs"]) == 4
    assert (tmp_path / "cali_table").read_text().count("\n") > 10


def test_search_composes_with_the_aids(tmp_path, capsys):
    """``qsens search --we``: the search runs on the aided model it wrote (its own calibration = TPU-MLIR's
    calibration after ``--we``), every output file as without aids."""
    from qsens.zoo import zoo_path

    ds = zoo_path("images100")
    if not ds.exists():
        pytest.skip("zoo not built (qsens zoo)")
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["search", GEN_WE, "--dataset", str(ds), "--input_num", "10", "--inference_num", "4",
                               *PP_FLAGS, "--we", "--max_float_layers", "1", "--expected_cos", "0.99999",
                               "--out_dir", str(out), "-q"], capsys)
    assert rc == 0, err
    assert "weight equalization: 4 Conv pairs equalized" in stdout
    for f in ("gen_we.aided_we.onnx", "gen_we.aided_we.aids.json", "qtable", "cali_table", "new_cali_table.txt",
              "search.json"):
        assert (out / f).exists(), f
    assert "gen_we.aided_we.onnx" in (out / "cali_table").read_text().splitlines()[1]  # calibrated the aided model
