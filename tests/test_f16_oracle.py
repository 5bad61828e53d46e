"""BM1684X F16 float layers against TPU-MLIR 1.23 (``--fp_type auto`` = F16 there: ``FLOAT_MAP``).

On BM1684X TPU-MLIR's searches use the F16 model as the reference and run every non-target op in F16.  The fixtures
(``tests/fixtures/tpu_mlir/<net>/f16_bm1684x``, ``mtcnn_pnet/mix_bm1684x``, ``mtcnn_pnet/sensitive_bm1684x``; the
commands in their ``meta.json``) are TPU-MLIR's own F16 models, a mixed INT8/F16 model and its BM1684X sensitive
search.  Checked here:

* which ops TPU-MLIR keeps F32 inside an F16 model equals qsens's rule (:func:`qsens.onnx.convert.op_float_type`);
* every tensor of qsens's F16 model against TPU-MLIR's: almost all elements equal (the rest a few F16 ulps apart:
  XLA's and oneDNN's convolutions sum in different orders, and a 1-ulp difference propagates), far closer than the
  F32 model;
* the casts of a mixed model: F16 -> INT8 in F16 arithmetic (INT8 codes equal), INT8 -> F16 unrounded;
* ``qsens search --chip bm1684x`` (auto = F16) reproduces run_sensitive_layer's per-op losses within 2e-7 (with the
  F32 float layers they were 2e-5 apart), its similarities, float layers, new table and qtable.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import tpu_mlir_oracle as O  # noqa: N812

NETS = [n for n in O.available() if (O.FIXTURES / n / "f16_bm1684x" / "f16.npz").exists()]
#: ops qsens keeps F32 in its BM1684X INT8 model where TPU-MLIR has an INT8 lowering (docs/bm1684x.md)
NOT_MODELLED: set = set()  # PNet's Softmax is INT8 by table on BM1684X, modelled (qsens.quant.kernels._softmax_table)


def _model(name):
    import qsens.onnx

    fx = O.load(name)
    return fx, *qsens.onnx.to_jax(str(O.model_path(fx)), O.input_shapes(fx))


def _run(fn, params, x, float_type):
    from qsens.onnx.convert import run_graph

    g = fn.model.graph
    _, env = fn.model.input_env(x)
    return run_graph(fn.model.graph_at(1), params, env, keep=tuple(g.tensors), float_type=float_type)


def test_f16_fixtures_present():
    assert set(NETS) >= {"mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "gen_act", "gen_pool", "gen_const", "gen_wconst"}


@pytest.mark.parametrize("name", NETS)
def test_f16_model_matches_tpu_mlir(name, zoo):
    from qsens.onnx.convert import op_float_type

    fx, fn, params = _model(name)
    sub = fx.file("f16_bm1684x")
    qinfo = json.loads((sub / "qinfo.json").read_text())
    ref = fx.npz("f16_bm1684x", "f16.npz")
    inputs = fx.npz("f16_bm1684x", "inputs.npz")
    g = fn.model.graph
    for op in g.ops:  # the op kinds TPU-MLIR keeps F32 inside its F16 model
        t = op.outputs[0]
        if op.type == "Input" or t not in qinfo or op.type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            continue
        assert op_float_type(op, "F16") == qinfo[t]["dtype"], (op.name, op.type, qinfo[t]["dtype"])
    counts = {"F16": [0, 0], "F32": [0, 0]}
    worst = {"F16": 0.0, "F32": 0.0}
    for s in range(next(iter(inputs.values())).shape[0]):
        x = {k: v[s : s + 1] for k, v in inputs.items()}
        for ft in ("F16", "F32"):
            env = _run(fn, params, x, ft)
            for t in g.tensors:
                if t not in ref or qinfo[t]["dtype"] != "F16":
                    continue
                a, b = np.asarray(env[t], np.float32).ravel(), ref[t][s].astype(np.float32).ravel()
                counts[ft][0] += int(np.sum(a != b))
                counts[ft][1] += a.size
                worst[ft] = max(worst[ft], float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)))
    f16_miss = counts["F16"][0] / counts["F16"][1]
    f32_miss = counts["F32"][0] / counts["F32"][1]
    assert f16_miss < 0.2 and f16_miss * 5 < f32_miss, (f16_miss, f32_miss)  # F32 values are rarely F16 values
    assert worst["F16"] < 1.5e-3, worst  # a few F16 ulps of the tensor's range at most
    assert worst["F16"] < worst["F32"], worst


def test_f16_model_small_nets_nearly_exact(zoo):
    """On the nets without long chains (PNet, gen_act, gen_wconst) at most 2 % of the F16 elements differ."""
    from qsens.onnx.convert import run_graph  # noqa: F401

    for name in ("mtcnn_pnet", "gen_act", "gen_wconst"):
        fx, fn, params = _model(name)
        ref, inputs = fx.npz("f16_bm1684x", "f16.npz"), fx.npz("f16_bm1684x", "inputs.npz")
        qinfo = fx.json("f16_bm1684x", "qinfo.json")
        env = _run(fn, params, {k: v[:1] for k, v in inputs.items()}, "F16")
        miss = [np.mean(np.asarray(env[t]).ravel() != ref[t][0].ravel()) for t in fn.model.graph.tensors
                if t in ref and qinfo[t]["dtype"] == "F16"]
        assert max(miss) < 0.02, (name, max(miss))


def test_mixed_int8_f16_casts_bit_exact(zoo):
    """PNet with conv2d_1_Conv INT8 and every other op F16 (what run_sensitive_layer scores for that op): the F16 ->
    INT8 cast in F16 arithmetic gives TPU-MLIR's codes exactly, and the INT8 -> F16 cast is not rounded, so the
    next F16 op (prelu_1) equals TPU-MLIR's too."""
    from qsens.quant import BM1684X
    from qsens.quant.mixed import MixedModel, plan_from_table, thresholds_from_table
    from qsens.tables import read_cali_table

    fx, fn, params = _model("mtcnn_pnet")
    g = fn.model.graph
    table = read_cali_table(str(fx.file("cali_table")))
    plan = plan_from_table(g, table, BM1684X)
    assert plan.float_type == "F16"
    ref, inputs = fx.npz("mix_bm1684x", "int8.npz"), fx.npz("mix_bm1684x", "inputs.npz")
    qinfo = fx.json("mix_bm1684x", "qinfo.json")
    qt = [line.split()[0] for line in fx.file("mix_bm1684x", "qtable").read_text().splitlines() if line[:1] != "#"]
    assert "conv2d_1_Conv" not in qt and len(qt) == len(g.ops) - 2  # all but the Input and the INT8 conv
    mask = np.array([op.name == "conv2d_1_Conv" for op in g.ops])
    mm = MixedModel(fn.model, plan)
    for s in range(2):
        _, tapped = mm.apply(params, {k: v[s : s + 1] for k, v in inputs.items()}, thresholds_from_table(g, table),
                             mask, taps=tuple(g.tensors))
        codes = np.asarray(tapped["conv2d_1_Conv"]).ravel() / qinfo["conv2d_1_Conv"]["scale"]
        np.testing.assert_array_equal(np.round(codes).astype(int), ref["conv2d_1_Conv"][s].ravel().astype(int))
        np.testing.assert_array_equal(np.asarray(tapped["prelu_1_PRelu"]).ravel(), ref["prelu_1_PRelu"][s].ravel())
        for t in ("conv2d_2_Conv", "conv2d_3_Conv", "conv2d_4_Conv", "softmax_Softmax"):
            a, b = np.asarray(tapped[t]).ravel(), ref[t][s].ravel()
            assert np.mean(a != b) < 0.01 and np.abs(a - b).max() <= 2e-3 * np.abs(b).max(), t


def test_f16_cast_to_int8_rule():
    """:func:`qsens.quant.kernels.quantize_from`: ``saturate(RHAZ(f16(x * f16(1/s))))`` against NumPy's float16,
    and the F32 rule unchanged."""
    from qsens.quant.kernels import quantize, quantize_from

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * 8).astype(np.float16).astype(np.float32)
    th = np.float32(13.3756123)
    s = th / np.float32(127)
    inv16 = np.float32(np.float16(np.float32(1) / s))
    v = np.float16(x * inv16).astype(np.float64)
    want = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -128, 127).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(quantize_from(x, th, True, "F16")), want)
    np.testing.assert_array_equal(np.asarray(quantize_from(x, th, True, "F32")), np.asarray(quantize(x, th, True)))
    assert np.sum(np.asarray(quantize_from(x, th, True, "F16")) != np.asarray(quantize(x, th, True))) > 0


def test_sensitive_search_bm1684x_f16(tmp_path, zoo):
    """``qsens search --chip bm1684x`` (``--fp_type auto`` = F16, as TPU-MLIR) == run_sensitive_layer.py on BM1684X."""
    from qsens.cli import main
    from tests.test_tpu_mlir_oracle import _dataset, _flag_args

    fx = O.load("mtcnn_pnet")
    f = fx.flags
    assert main(["search", str(O.model_path(fx)), "--dataset", _dataset(fx), "--input_num", str(f["input_num"]),
                 "--inference_num", str(f["inference_num"]), *_flag_args(fx), "--calibration_table",
                 str(fx.file("cali_table")), "--expected_cos", str(f["expected_cos"]), "--max_float_layers",
                 str(f["max_float_layers"]), "--chip", "bm1684x", "--out_dir", str(tmp_path), "-q"]) == 0
    theirs = fx.json("sensitive_bm1684x", "summary.json")
    ours = json.loads((tmp_path / "search.json").read_text())
    n = 0
    for o in ours["ops"]:
        if o["op"] in NOT_MODELLED:
            continue
        t = theirs["layers"][o["op"]]
        assert o["best_method"] == t["best_method"], o["op"]
        for c in o["candidates"]:
            assert abs(c["loss"] - t["methods"][c["method"]]["loss"]) < 2e-7, (o["op"], c["method"], c["loss"])
            n += 1
    assert n == 3 * (len(theirs["layers"]) - len(NOT_MODELLED))
    assert ours["float_layers"] == theirs["float_layers"]
    s = ours["summary"]
    assert round(s["int8"]["similarity"], 6) == pytest.approx(theirs["int8_outputs_cos"], abs=1.5e-6)
    assert round(s["mix_new_table"]["similarity"], 6) == pytest.approx(theirs["mix_outputs_cos"], abs=1.5e-6)
    qt = (tmp_path / "qtable").read_text().splitlines()
    theirs_qt = fx.file("sensitive_bm1684x", "qtable").read_text().splitlines()
    assert "# chip: bm1684x  mix_mode: F16" in qt and "# number of F16 layer: 3" in qt
    assert [x for x in qt if x[:1] != "#"] == [x for x in theirs_qt if x[:1] != "#"]
    from tests.test_tpu_mlir_oracle import assert_tables_close

    assert_tables_close(tmp_path / "new_cali_table.txt", fx.file("sensitive_bm1684x", "new_cali_table.txt"), 2e-6)


def test_run_dump_of_a_mixed_bm1684x_model(tmp_path, capsys, zoo):
    """``qsens run --int8 --chip bm1684x --quantize_table`` (F16 float layers, ``--fp_type auto``) on TPU-MLIR's inputs
    dumps what TPU-MLIR's interpreter computed for the same mixed model (``mtcnn_pnet/mix_bm1684x``): the INT8 op's
    codes and the F16 op behind it equal, the rest within a few F16 ulps; with ``--fp_type F32`` they are not."""
    from tests.cli_util import run_cli

    fx = O.load("mtcnn_pnet")
    sub = fx.file("mix_bm1684x")
    ref = fx.npz("mix_bm1684x", "int8.npz")
    dumps = {}
    for ft in ("auto", "F32"):
        out = tmp_path / f"{ft}.npz"
        rc, _, _ = run_cli(["run", str(O.model_path(fx)), "--input_shapes", "[[1,3,48,48]]", "--input",
                            str(sub / "inputs.npz"), "--int8", "--codes", "--chip", "bm1684x", "--fp_type", ft,
                            "--calibration_table", str(fx.file("cali_table")), "--quantize_table", str(sub / "qtable"),
                            "--dump", str(out)], capsys)
        assert rc == 0
        with np.load(out) as z:
            dumps[ft] = {k: z[k] for k in z.files}
    ref = {k: v.reshape((v.shape[0],) + v.shape[2:]) for k, v in ref.items()}  # (samples, 1, ...) -> (samples, ...)
    d = dumps["auto"]
    np.testing.assert_array_equal(d["conv2d_1_Conv_code"].astype(int), ref["conv2d_1_Conv"].astype(int))
    np.testing.assert_array_equal(d["prelu_1_PRelu"], ref["prelu_1_PRelu"])
    assert np.mean(d["conv2d_2_Conv"] != ref["conv2d_2_Conv"]) < 0.01
    assert np.mean(dumps["F32"]["prelu_1_PRelu"] != ref["prelu_1_PRelu"]) > 0.5
