"""BM1684X *asymmetric* INT8 (``qsens.quant.asym``) against TPU-MLIR 1.23's own asymmetric lowering + interpreter.

Fixture ``tests/fixtures/tpu_mlir/mtcnn_pnet/asym_bm1684x/`` (command in its ``meta.json``): PNet's asymmetric INT8
model of the fixture's ``cali_table`` (``mlir_lowering ... asymmetric=True``, what ``model_deploy.py --asymmetric``
deploys), every tensor as ``pymlir`` computes it on two preprocessed samples.  Checked: every tensor's storage type,
scale and zero point, every integer code, the F16 PRelus' values and the float outputs, bit for bit; the
``qsens run --asymmetric`` dump; the scale / zero-point rule on hand-computed vectors; the one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import tpu_mlir_oracle as O  # noqa: N812

SUB = "asym_bm1684x"
NAME = "mtcnn_pnet"
HAVE = (O.FIXTURES / NAME / SUB / "int8.npz").exists()
pytestmark = pytest.mark.skipif(not HAVE, reason="asymmetric PNet fixture absent")


def _pnet():
    import qsens.onnx

    fx = O.load(NAME)
    return fx, qsens.onnx.to_jax(str(O.model_path(fx)), O.input_shapes(fx))


def test_scale_zero_point_rule():
    """``scale = (max - min) / 255`` in double, ``zp = RHAZ(qmin - min / scale)``: hand-computed vectors."""
    from qsens.quant.asym import scale_zp

    s, z = scale_zp(-0.9960938, 0.9960938)  # PNet's input: -128 + 127.5 = -0.5 -> -1 (half away from zero)
    assert s == pytest.approx(1.9921876 / 255, rel=1e-15) and z == -1
    s, z = scale_zp(-47.7273293, 16.0735893)  # conv2d_1_Conv: -128 + 190.758... -> 63
    assert s == pytest.approx(63.8009186 / 255, rel=1e-15) and z == 63
    assert scale_zp(-0.6518, 0.6514235) == (pytest.approx(1.3032235 / 255, rel=1e-15), 0)  # -0.46 -> 0
    assert scale_zp(0.0, 1.0, signed=False) == (pytest.approx(1 / 255, rel=1e-15), 0)  # the Softmax output, uint8
    assert scale_zp(0.0, 1.0, signed=True)[1] == -128
    assert scale_zp(5.0, 10.0)[1] == -128  # -128 - 255 clamped to the int8 range
    from qsens.errors import QsensError

    with pytest.raises(QsensError, match=r"empty range \[2.0, 2.0\]"):
        scale_zp(2.0, 2.0)


@pytest.mark.zoo
def test_pnet_asymmetric_bit_exact(zoo):
    """Every tensor of TPU-MLIR's asymmetric PNet: storage type, scale, zero point and codes; the F16 PRelus and the
    float outputs value for value."""
    from qsens.quant.asym import AsymModel
    from qsens.tables import read_cali_table

    fx, (fn, params) = _pnet()
    am = AsymModel(fn.model, params, read_cali_table(fx.file("cali_table")))
    qinfo, ref, f32 = fx.json(SUB, "qinfo.json"), fx.npz(SUB, "int8.npz"), fx.npz(SUB, "f32.npz")
    x = fx.npz(SUB, "inputs.npz")["input"]
    per = [am.apply(params, {"input": x[i : i + 1]}) for i in range(len(x))]
    g = fn.model.graph
    n_int8 = n_f16 = 0
    for t in g.tensors:
        op = g.producer(t)
        if op.type == "Input":  # F32 in TPU-MLIR's model; its INT8 cast is the conv's input tensor
            key = f"{t}{g.consumers(t)[0].name}_si8"
            q = qinfo[key]
            assert (am.qinfo[t].scale, am.qinfo[t].zp) == (pytest.approx(q["scale"], rel=1e-7), q["zp"])
            got = np.stack([c[t] for _, c in per])
            np.testing.assert_array_equal(got.reshape(ref[key].shape), ref[key].astype(np.int32), err_msg=t)
            continue
        q = qinfo[t]
        if q["dtype"] == "F16":
            assert op.type == "PRelu" and t not in am.qinfo
            got = np.stack([v[t] for v, _ in per])
            np.testing.assert_array_equal(got.reshape(ref[t].shape), ref[t], err_msg=t)
            n_f16 += 1
            continue
        tq = am.qinfo[t]
        assert tq.dtype == q["dtype"] and tq.zp == q["zp"], t
        assert tq.scale == pytest.approx(q["scale"], rel=1e-7), t  # TPU-MLIR's qinfo holds the scale as float32
        got = np.stack([c[t] for _, c in per])
        np.testing.assert_array_equal(got.reshape(ref[t].shape), ref[t].astype(np.int32), err_msg=t)
        n_int8 += 1
    assert (n_int8, n_f16) == (7, 3)
    assert set(f32) == set(g.outputs)  # f32.npz: the float model's outputs; the INT8 model's are <t>_f32 in int8.npz
    for t in g.outputs:  # the outputs cast back to F32: (q - zp) * float32(scale)
        got = np.stack([v[t] for v, _ in per])
        np.testing.assert_array_equal(got.reshape(ref[t + "_f32"].shape), ref[t + "_f32"], err_msg=t)
    # the F16 -> INT8 casts in front of the consumers of the PRelus (TPU-MLIR's <prelu><consumer>_si8 tensors)
    casts = [k for k in ref if k.endswith("_si8") and not k.startswith("input")]
    assert len(casts) == 3 and all(qinfo[k]["zp"] == am.cast_q[k.split("PRelu")[0] + "PRelu"].zp for k in casts)


@pytest.mark.zoo
def test_run_asymmetric_dump(tmp_path, zoo, capsys):
    """``qsens run --int8 --chip bm1684x --asymmetric --codes``: the dump's codes and outputs are TPU-MLIR's."""
    from qsens.cli import main

    fx, _ = _pnet()
    out = tmp_path / "asym.npz"
    assert main(["run", str(O.model_path(fx)), "--input_shapes", "[[1,3,48,48]]", "--input",
                 str(fx.file(SUB, "inputs.npz")), "--int8", "--chip", "bm1684x", "--asymmetric", "--calibration_table",
                 str(fx.file("cali_table")), "--codes", "--dump", str(out)]) == 0
    assert "asymmetric INT8 (dequantized)" in capsys.readouterr().out
    ref, f32 = fx.npz(SUB, "int8.npz"), fx.npz(SUB, "f32.npz")
    with np.load(out) as z:
        for t in ("conv2d_Conv", "max_pool2d_MaxPool", "conv2d_2_Conv", "softmax_Softmax", "conv2d_4_Conv"):
            assert z[f"{t}_code"].dtype == (np.uint8 if t == "softmax_Softmax" else np.int8)
            np.testing.assert_array_equal(z[f"{t}_code"].reshape(ref[t].shape), ref[t], err_msg=t)
        for t in f32:  # the model outputs, dequantized
            np.testing.assert_array_equal(z[t].reshape(ref[t + "_f32"].shape), ref[t + "_f32"], err_msg=t)


@pytest.mark.zoo
@pytest.mark.parametrize("extra, msg", [
    (["--chip", "bm1684"], "modelled for BM1684X only, not BM1684"),
    (["--chip", "bm1684x", "--quantize_table", "QT"], "--asymmetric with --quantize_table is not modelled"),
    (["--chip", "bm1684x", "--no-int8"], "--asymmetric is a kind of INT8 model: add --int8"),
])
def test_run_asymmetric_errors(extra, msg, tmp_path, zoo, capsys):
    from qsens.cli import main

    fx, _ = _pnet()
    qt = tmp_path / "qt"
    qt.write_text("conv2d_Conv F16\n")
    extra = [str(qt) if e == "QT" else e for e in extra]
    int8 = [] if "--no-int8" in extra else ["--int8"]
    extra = [e for e in extra if e != "--no-int8"]
    rc = main(["run", str(O.model_path(fx)), "--input_shapes", "[[1,3,48,48]]", "--input", str(fx.file(SUB, "inputs.npz")),
               *int8, "--asymmetric", "--calibration_table", str(fx.file("cali_table")), *extra, "--dump",
               str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert rc != 0 and msg in err and "Traceback" not in err
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.zoo
def test_unmodelled_op_is_refused(zoo):
    """gen_act holds ops whose asymmetric lowering was not checked (LeakyRelu, Add, Concat, AvgPool, MatMul):
    refused with the op's name, not simulated."""
    import qsens.onnx
    from qsens.errors import QsensError
    from qsens.quant.asym import AsymModel
    from qsens.tables import read_cali_table

    fx = O.load("gen_act")
    fn, params = qsens.onnx.to_jax(str(O.model_path(fx)), O.input_shapes(fx))
    with pytest.raises(QsensError, match=r"op '\S+' \((LeakyRelu|Add|Concat|AvgPool|MatMul)\): its asymmetric BM1684X "
                                         r"INT8 form is not modelled"):
        AsymModel(fn.model, params, read_cali_table(fx.file("cali_table")))
