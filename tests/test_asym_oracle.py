"""BM1684X *asymmetric* INT8 (``qsens.quant.asym``) against TPU-MLIR 1.23's own asymmetric lowering + interpreter.

Fixtures ``tests/fixtures/tpu_mlir/{mtcnn_pnet,mtcnn_rnet,mtcnn_onet,gen_act,gen_pool}/asym_bm1684x/`` (command in each
``meta.json``): each net's asymmetric INT8 model of the fixture's ``cali_table`` (``mlir_lowering ... asymmetric=True``, what ``model_deploy.py --asymmetric``
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
NETS = [n for n in O.available() if (O.FIXTURES / n / SUB / "int8.npz").exists()]


def test_asym_fixtures_present():
    assert set(NETS) == {"mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "gen_act", "gen_pool"}


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


#: per net: F16 values one F16 ulp off TPU-MLIR's (qsens's F16 PRelu rounds a float32 product; the F16 -> INT8 casts
#: after it give equal codes): ONet's prelu_2_PRelu, 23 of 8,192
F16_ULP_OFF = {"mtcnn_onet": {"prelu_2_PRelu": 23}}
#: per net: (INT8 tensors, F16 tensors) checked
COUNTS = {"mtcnn_pnet": (7, 3), "mtcnn_rnet": (11, 4), "mtcnn_onet": (14, 5), "gen_act": (10, 2), "gen_pool": (13, 1)}


def _tpu_name(t: str, names) -> str | None:
    """TPU-MLIR's name of qsens's tensor ``t``: the same, or (a Softmax it reshaped to 4-D) ``t__<op>_reshape``."""
    if t in names:
        return t
    alias = [k for k in names if k.startswith(t + "__") and k.endswith("_reshape")]
    return alias[0] if len(alias) == 1 else None


@pytest.mark.zoo
@pytest.mark.parametrize("name", NETS)
def test_asymmetric_bit_exact(name, zoo):
    """Every tensor of TPU-MLIR's asymmetric INT8 model: storage type, scale, zero point and codes; the F16 ops'
    values; the INT8 -> F32 outputs value for value."""
    import qsens.onnx
    from qsens.quant.asym import AsymModel
    from qsens.tables import read_cali_table

    fx = O.load(name)
    fn, params = qsens.onnx.to_jax(str(O.model_path(fx)), O.input_shapes(fx))
    am = AsymModel(fn.model, params, read_cali_table(fx.file("cali_table")))
    qinfo, ref = fx.json(SUB, "qinfo.json"), fx.npz(SUB, "int8.npz")
    x = fx.npz(SUB, "inputs.npz")
    x = x[next(iter(x))]
    g = fn.model.graph
    per = [am.apply(params, {g.inputs[0]: x[i : i + 1]}) for i in range(len(x))]
    n_int8 = n_f16 = 0
    for t in g.tensors:
        op = g.producer(t)
        if op.type == "Input":  # F32 in TPU-MLIR's model; its INT8 cast is named after the first consumer
            key = f"{t}{g.consumers(t)[0].name}_si8"
            assert (am.qinfo[t].scale, am.qinfo[t].zp) == (pytest.approx(qinfo[key]["scale"], rel=1e-7), qinfo[key]["zp"])
            got = np.stack([c[t] for _, c in per])
            np.testing.assert_array_equal(got.reshape(ref[key].shape), ref[key].astype(np.int32), err_msg=t)
            continue
        k = _tpu_name(t, qinfo)
        assert k is not None, t
        q = qinfo[k]
        if q["dtype"] == "F16":
            assert op.type in ("PRelu", "LeakyRelu") and t not in am.qinfo, t
            got = np.stack([v[t] for v, _ in per]).reshape(ref[k].shape)
            off = got != ref[k]
            assert int(off.sum()) == F16_ULP_OFF.get(name, {}).get(t, 0), t
            if off.any():
                assert np.all(np.abs(got - ref[k])[off] <= np.spacing(np.abs(ref[k][off]).astype(np.float16)).astype(np.float32))
            n_f16 += 1
            continue
        tq = am.qinfo[t]
        assert (tq.dtype, tq.zp) == (q["dtype"], q["zp"]), t
        assert tq.scale == pytest.approx(q["scale"], rel=1e-7), t  # TPU-MLIR's qinfo holds the scale as float32
        got = np.stack([c[t] for _, c in per])
        np.testing.assert_array_equal(got.reshape(ref[k].shape), ref[k].astype(np.int32), err_msg=t)
        n_int8 += 1
    assert (n_int8, n_f16) == COUNTS[name]
    for t in g.outputs:  # the outputs cast back to F32: (q - zp) * float32(scale)
        k = _tpu_name(t, qinfo) + "_f32"
        got = np.stack([v[t] for v, _ in per])
        np.testing.assert_array_equal(got.reshape(ref[k].shape), ref[k], err_msg=t)
    # the F16 -> INT8 casts in front of the F16 ops' INT8 consumers carry the tensor's own zero point
    for t, cq in am.cast_q.items():
        casts = [k for k in ref if k.startswith(t) and k.endswith("_si8")]
        assert casts and all(qinfo[c]["zp"] == cq.zp for c in casts), t


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
    """gen_const holds ops whose asymmetric lowering no fixture checks (SubConst first): refused with the op's name,
    not simulated."""
    import qsens.onnx
    from qsens.errors import QsensError
    from qsens.quant.asym import AsymModel
    from qsens.tables import read_cali_table

    fx = O.load("gen_const")
    fn, params = qsens.onnx.to_jax(str(O.model_path(fx)), O.input_shapes(fx))
    with pytest.raises(QsensError, match=r"op 'sub5_Sub' \(SubConst\): its asymmetric BM1684X INT8 form is not modelled"):
        AsymModel(fn.model, params, read_cali_table(fx.file("cali_table")))
