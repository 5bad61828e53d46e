"""qsens against the real TPU-MLIR 1.23 (fixtures made by ``reference/tpu_mlir/run.py``, command in meta.json).

Per reference model (MTCNN PNet and generated nets that exercise the BM1684 kernels and the calibration
post-processing; see tests/fixtures/tpu_mlir/*/meta.json for the exact commands):

* the canonical op list equals TPU-MLIR's Top-dialect op list (names, types, order, activation operands);
* every calibration table ``run_calibration`` writes (KL tuned, MAX, Percentile9999, MSE) and every per-method
  table ``run_sensitive_layer`` generates (``_<M>.1`` and ``_<M>_tune``): same tensors in the same order, values
  equal to TPU-MLIR's printed digits within 2e-6 relative (both tools run the float model in float32 with
  different convolution code: activations differ in the last bits; ``REL_BY`` names the fixtures allowed more);
* every tensor of the BM1684 INT8 model of TPU-MLIR's table: same storage type and scale, and integer codes
  equal bit for bit to TPU-MLIR's interpreter on TPU-MLIR's own preprocessed inputs (``TIE_DEPENDENT``: where
  a code at an exact rounding tie is the recording CPU's);
* run_sensitive_layer: every (op, method) loss within 1e-6, the same best method per op, the same float layers,
  the same all-INT8 and mix similarity (to its 6 printed digits) and the same new_cali_table.

``pytest -m reference`` re-runs the live comparison when the harness venv exists (``setup.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import tpu_mlir_oracle as O  # noqa: N812
from tests.tpu_mlir_parser import python_parse

FIXTURES = O.available()
REL = 2e-6
#: per fixture: the relative tolerance of calibration-table values where the two float models differ by design.
#: yolo5n: TPU-MLIR's float model runs its 28 fused SiLUs as one op (x / (1 + e^-x)), qsens the ONNX nodes they came
#: from (x * sigmoid(x)); activations deep in the net drift apart by up to 3.1e-6 relative
#: efficientnet_lite0_op13: qsens's float32 forward moves by CPU too (XLA's convolution kernels): the min of
#: /_blocks.7/_project_conv over 100 images is 2.85e-6 from TPU-MLIR's on an AMD EPYC (AVX-512), under 2e-6 on the
#: machine the fixture was recorded on; TPU-MLIR 1.23 itself, rerun on that EPYC, moved 54 of the KL table's values
#: by up to 7.5e-7
REL_BY = {"yolo5n": 1e-5, "efficientnet_lite0_op13": 4e-6}
#: TPU-MLIR 1.23 interpreter defects that change its run_sensitive_layer results (qsens computes what the chip does):
#: gen_const's INT8 Pad with a non-zero fill value: pymlir multiplies the stored border by the scale again on every
#: invocation (0.503 -> 0.0020 -> 0.000125; docs/bm1684.md, reference/tpu_mlir/pad_leak.py), so its all-INT8 similarity and the loss of
#: pad30_Pad (ranked first) are wrong from the second image on; qsens's ranking equals TPU-MLIR's without that op
INTERPRETER_DEFECT = {"gen_const": "pad30_Pad"}
#: tensors whose recorded codes at an *exact* rounding tie of the integer accumulator depend on the CPU the fixture was
#: recorded on (TPU-MLIR's and, CI runs show, qsens's too; not located): Lite0's 1152-deep merged head conv, image 1,
#: channel 1226, (3, 6): accumulator 3408 = 106.5 * 2^5. The fixture (and its bmodel run) say 106; TPU-MLIR 1.23 rerun
#: on an AMD EPYC (AVX-512) with the same model bytes, table and inputs says 107, as qsens. There, and only at
#: exact ties (tpu_mlir_oracle.conv_tie_mask, computed in int64 outside qsens), a code may be one above the record
TIE_DEPENDENT = {"efficientnet_lite0_op13": ("/_swish_1/Clip_output_0_Clip",)}


def _fx(name):
    return O.load(name)


def _flag_args(fx) -> list[str]:
    f = fx.flags
    out = []
    for k in ("input_shapes", "resize_dims", "mean", "scale", "pixel_format", "channel_format", "keep_ratio_mode",
              "pad_type", "pad_value"):
        if f.get(k) is not None:
            out += [f"--{k}", str(f[k])]
    if f.get("keep_aspect_ratio"):
        out.append("--keep_aspect_ratio")
    return out


def _dataset(fx) -> str:
    from qsens.zoo import zoo_path

    return str(zoo_path(os.path.basename(fx.flags["dataset"].rstrip("/"))))


def _table(path):
    headers, rows = python_parse(str(path))
    return headers, rows


def assert_tables_close(ours: Path, theirs: Path, rel: float = REL, skip=()):
    _, a = _table(ours)
    _, b = _table(theirs)
    assert list(a) == list(b), f"{ours.name}: tensor names/order differ from TPU-MLIR's {theirs.name}"
    bad = [(t, i, x, y) for t in b if t not in skip for i, (x, y) in enumerate(zip(a[t], b[t]))
           if abs(x - y) > rel * max(abs(y), 1e-3)]
    assert not bad, f"{ours.name} vs TPU-MLIR {theirs.name}: {len(bad)} value(s) differ, e.g. {bad[:3]}"


@pytest.fixture(scope="module")
def models():
    import qsens.onnx

    out = {}
    for name in FIXTURES:
        fx = _fx(name)
        out[name] = qsens.onnx.to_jax(str(O.model_path(fx)), O.input_shapes(fx))
    return out


def test_fixtures_present():
    assert {"mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "gen_act", "gen_pool", "gen_const", "gen_wconst", "efficientnet_lite0_op13",
            "mbv3s", "yolo5n", "fpn"} <= set(FIXTURES)
    for name in FIXTURES:
        fx = _fx(name)
        assert fx.meta["tpu_mlir"] == "1.23" and fx.meta["commands"], name


@pytest.mark.zoo
@pytest.mark.parametrize("name", FIXTURES)
def test_op_list_equals_tpu_mlir(name, models, zoo):
    fx = _fx(name)
    g = models[name][0].graph
    ours = [(op.name, op.type) for op in g.ops]
    theirs = [(o["name"], o["type"].removeprefix("top.")) for o in fx.ops]
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    names = {o["name"] for o in fx.ops}
    for op, o in zip(g.ops, fx.ops):
        assert op.type == o["type"].removeprefix("top.") or (op.type, o["type"]) in {("Reshape", "top.Reshape")}, op.name
        assert list(op.inputs) == [x for x in o["operands"] if x in names], op.name


@pytest.mark.zoo
@pytest.mark.parametrize("name", FIXTURES)
def test_run_calibration_tables(name, tmp_path, zoo):
    """``qsens calibrate`` (default: v2 statistics, KL tuned) == ``run_calibration.py`` for every method."""
    from qsens.cli import main

    fx = _fx(name)
    out = tmp_path / "t"
    rel = REL_BY.get(name, REL)
    argv = ["calibrate", str(O.model_path(fx)), "--dataset", _dataset(fx), "--input_num", str(fx.flags["input_num"]),
            *_flag_args(fx), "--methods", "max,percentile9999,mse", "-q", "-o", str(out)]
    assert main(argv) == 0
    assert_tables_close(out, fx.file("cali_table"), rel)
    for m in ("max", "percentile9999", "mse"):
        assert_tables_close(Path(f"{out}_{m}.1"), fx.file(f"cali_table_{m}"), rel)
    headers, _ = _table(out)
    theirs, _ = _table(fx.file("cali_table"))
    drop = ("# mlir version", "# mlir:", "# genetated time")
    assert [h for h in headers if not h.startswith(drop)] == [h for h in theirs if not h.startswith(drop)]


@pytest.mark.zoo
@pytest.mark.parametrize("name", FIXTURES)
def test_int8_model_bit_exact(name, models, zoo):
    """Every quantized tensor of the INT8 model of TPU-MLIR's table: storage type, scale and codes."""
    fn, params = models[name]
    fx = _fx(name)
    plan, codes, scales = O.int8_codes(fx, fn.model, params)
    qinfo = fx.json("int8", "qinfo.json")
    ref = fx.npz("int8", "int8.npz")
    checked = 0
    for t in plan.graph.tensors:
        q = qinfo[t]
        if q["dtype"] not in ("I8", "U8"):  # F32 inside the INT8 model (the Input, Softmax): qsens agrees
            op = plan.graph.producer(t)
            assert op.type == "Input" or op.name in plan.f32_reason, t
            continue
        scale, signed = scales[t]
        assert signed == (q["dtype"] == "I8"), t
        assert scale == pytest.approx(q["scale"], rel=1e-6), t
        ours, theirs = codes[t].reshape(ref[t].shape), ref[t].astype(np.int32)
        # every tensor bit for bit, Lite0's merged head conv included (its float32 merge, canonical._merge_conv1x1),
        # but for a code at an exact rounding tie, which the recording CPU decides (TIE_DEPENDENT)
        if t in TIE_DEPENDENT.get(name, ()):
            x = ref[plan.graph.producer(t).inputs[0]].astype(np.int64)
            ties = O.conv_tie_mask(fx, plan, fn.model, params, t, x.reshape((-1,) + x.shape[-3:]))
            O.assert_codes_equal_but_ties(ours, theirs, ties, t)
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=t)
        checked += 1
    assert checked == sum(qinfo[t]["dtype"] in ("I8", "U8") for t in plan.graph.tensors) >= len(plan.graph.tensors) - 3


#: checked so far. gen_pool: the simulator's outputs differ from TPU-MLIR's own interpreter (121 of 192 output
#: codes, up to 2 apart) while qsens equals the interpreter bit for bit; not located yet (AvgPool 3x3 with
#: padding, the Sigmoid LUT and the bias-free conv are the suspects). RNet/ONet: outputs recorded, not compared yet.
BMODEL_CHECKED = ("mtcnn_pnet", "gen_act")


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in BMODEL_CHECKED if n in FIXTURES])
def test_bmodel_on_the_bm1684_simulator(name, models, zoo):
    """The deployed bmodel (model_deploy.py + the chip simulator) gives qsens's INT8 outputs: same codes."""
    fn, params = models[name]
    fx = _fx(name)
    plan, codes, scales = O.int8_codes(fx, fn.model, params)
    qinfo = fx.json("int8", "qinfo.json")
    sim = fx.npz("bmodel", "outputs.npz")
    for k, v in sim.items():
        t = k.removesuffix("_f32")
        if qinfo[t]["dtype"] in ("I8", "U8"):  # an INT8 output, cast to F32 at the end: compare the codes
            got = np.rint(v.astype(np.float64) / qinfo[t]["scale"]).astype(np.int32)
            np.testing.assert_array_equal(got, codes[t].reshape(v.shape), err_msg=k)
        else:  # an op the INT8 model keeps in F32 (PNet's Softmax)
            _, vals = O.int8_values(fx, fn.model, params, (t,))
            np.testing.assert_allclose(vals[t].reshape(v.shape), v, rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.zoo
def test_lite0_head_on_the_bm1684_simulator(models, zoo):
    """Lite0's head on the chip (``bmodel_head/README.md``): the merged 1152-deep conv and the average pool equal
    qsens bit for bit; the FC differs in 1 code of 1000 per sample, each at an exact accumulator within 0.002 of a
    rounding tie (the chip's FC rounding there is not modelled; TPU-MLIR's interpreter and qsens agree)."""
    name = "efficientnet_lite0_op13"
    if name not in FIXTURES:
        pytest.skip("Lite0 fixture absent")
    fn, params = models[name]
    fx = _fx(name)
    plan, codes, _ = O.int8_codes(fx, fn.model, params)
    chip = fx.npz("bmodel_head", "codes.npz")
    head, pool = "/_swish_1/Clip_output_0_Clip", "/_avg_pooling/GlobalAveragePool_output_0_GlobalAveragePool"
    x = fx.npz("int8", "int8.npz")[fn.model.graph.producer(head).inputs[0]].astype(np.int64)
    ties = O.conv_tie_mask(fx, plan, fn.model, params, head, x.reshape((-1,) + x.shape[-3:]))
    assert int(ties.sum()) > 0  # the head conv does have exact ties on these two images
    flips = O.assert_codes_equal_but_ties(codes[head].reshape(chip[head].shape), chip[head].astype(np.int32), ties, head)
    assert flips <= 1  # recorded: 0 on the recording machine, 1 ([1, 1226, 3, 6]) on an AMD EPYC
    if flips == 0:  # the pool sums the head's codes: bit-exact wherever the head is
        np.testing.assert_array_equal(chip[pool].astype(np.int32), codes[pool].reshape(chip[pool].shape), err_msg=pool)
    else:  # one head code one up moves the 7x7 pool sum by one: at most one pool code, by at most one
        d = np.abs(chip[pool].astype(np.int32) - codes[pool].reshape(chip[pool].shape))
        assert int((d != 0).sum()) <= flips and int(d.max()) <= 1
    got, ours = chip["logits_Gemm"].astype(np.int32), codes["logits_Gemm"].reshape(2, 1000)
    assert [tuple(map(int, ij)) for ij in np.argwhere(got != ours)] == [(0, 191), (1, 568)]
    assert [int(ours[0, 191]), int(ours[1, 568])] == [-17, 0] and [int(got[0, 191]), int(got[1, 568])] == [-16, 1]


@pytest.mark.zoo
def test_gen_pool_chip_differs_at_avgpool_borders(models, zoo):
    """Where the BM1684 simulator leaves TPU-MLIR's interpreter on gen_pool (``bmodel_all/README.md``): every op
    output is a bmodel output there, so the chip's tensors are compared one by one. Bit-exact up to the 3x3
    AveragePool (pads 1, count_include_pad 0); that AvgPool is bit-exact at every interior position and differs
    only where its window overlaps the padding (the border divisor); the later ops inherit it. qsens follows the
    interpreter (test_int8_model_bit_exact); the chip's border formula is not modelled (README, "Checked against
    TPU-MLIR")."""
    name = "gen_pool"
    if name not in FIXTURES:
        pytest.skip("gen_pool fixture absent")
    fn, params = models[name]
    fx = _fx(name)
    plan, codes, _ = O.int8_codes(fx, fn.model, params)
    qinfo = fx.json("int8", "qinfo.json")
    chip = fx.npz("bmodel_all", "outputs.npz")
    order = [op.outputs[0] for op in plan.graph.ops if op.outputs[0] + "_f32" in chip]
    assert order[4] == "averagepool11_AveragePool" and len(order) == 14
    n_border = 0
    for i, t in enumerate(order):
        v = chip[t + "_f32"]
        got = np.rint(v.astype(np.float64) / qinfo[t]["scale"]).astype(np.int32)
        ours = codes[t].reshape(got.shape)
        if i < 4:
            np.testing.assert_array_equal(got, ours, err_msg=t)
        elif i == 4:
            diff = got != ours
            interior = np.zeros(diff.shape[-2:], bool)
            interior[1:-1, 1:-1] = True
            assert not diff[..., interior].any()  # the interior: bit-exact
            n_border = int(diff.sum())
            assert n_border == 188 and np.abs(got - ours).max() == 2  # of 2 x 8 x 28 border positions
        else:
            assert (got != ours).any(), t  # inherited
    assert n_border


@pytest.fixture(scope="module")
def searches(tmp_path_factory, zoo):
    """``qsens search`` with TPU-MLIR's own table and flags, once per fixture."""
    from qsens.cli import main

    out = {}
    for name in FIXTURES:
        fx = _fx(name)
        d = tmp_path_factory.mktemp(name)
        f = fx.flags
        argv = ["search", str(O.model_path(fx)), "--dataset", _dataset(fx), "--input_num", str(f["input_num"]),
                "--inference_num", str(f["inference_num"]), *_flag_args(fx), "--calibration_table",
                str(fx.file("cali_table")), "--expected_cos", str(f["expected_cos"]), "--max_float_layers",
                str(f["max_float_layers"]), "--out_dir", str(d), "-q"]
        assert main(argv) == 0
        out[name] = d
    return out


@pytest.mark.zoo
@pytest.mark.parametrize("name", FIXTURES)
def test_sensitive_method_tables(name, searches):
    """The per-method tables qsens's search generates (v1 statistics) == run_sensitive_layer's."""
    fx = _fx(name)
    for m in ("MAX", "Percentile9999", "KL"):
        for suffix in (".1", "_tune"):
            assert_tables_close(searches[name] / f"cali_table_{m}{suffix}", fx.file("sensitive", f"cali_table_{m}{suffix}"),
                                REL_BY.get(name, REL))


#: per fixture: |loss difference| per (op, method), all-INT8 and mix similarity differences
TOL = {"default": (1e-6, 1.5e-6, 1.5e-6),
       # Lite0 (17 blocks, 30 images): the all-INT8 model is bit-exact (similarity 1.1e-8 apart since the merged
       # convs' float32 arithmetic, canonical._merge_conv1x1); float32 differences between XLA's and oneDNN's
       # convolutions grow to 2e-5 relative after three F32 layers of the mix model and move a few codes of the next
       # INT8 layer across a rounding boundary; the decisions (methods, float layers, table) are the same.
       # The all-INT8 similarity: 0.857026 recorded; with the recorded table on an AMD EPYC qsens gives 0.857057
       # and TPU-MLIR 1.23 itself 0.8570566 (run_sensitive_layer's all_int8_cos there); the
       # recording CPU decides codes at exact rounding ties (TIE_DEPENDENT) and moves float statistics, so this
       # fixture's record is only good to ~3e-5 elsewhere. On one CPU the two tools agree: TPU-MLIR 1.23 rerun on
       # that EPYC (its own table there) gave 0.85703416, qsens with that table 0.85703416, all 180 (op, method)
       # losses within 7.4e-7, the same methods, float layers and qtable
       "efficientnet_lite0_op13": (2e-6, 5e-5, 3e-4),
       # mbv3s / yolo5n: TPU-MLIR's float model runs fused ops (HardSwish as AddConst/Max/Min/Mul, merged Scales,
       # SiLU as one op) where qsens runs the ONNX nodes: one mbv3s loss (the last Conv before the head's HardSwish,
       # 7.3e-5) is 1.1e-6 apart with equal thresholds (its mixed outputs equal TPU-MLIR's interpreter on the dumped
       # images), and the mix similarities (3 float layers) 3e-6 / 4e-6 apart; same decisions
       "mbv3s": (2e-6, 1.5e-6, 5e-6),
       "yolo5n": (1.5e-6, 1.5e-6, 5e-6)}


@pytest.mark.zoo
@pytest.mark.parametrize("name", FIXTURES)
def test_sensitive_layer_search(name, searches):
    assert_search_equal(name, searches[name], "sensitive")


def assert_search_equal(name: str, run: Path, step: str) -> None:
    """qsens's search in ``run`` == run_sensitive_layer's in the fixture's ``step`` folder: every (op, method)
    threshold and loss, the best methods (near-ties aside), the float layers, both similarities, the new table and
    the qtable."""
    fx = _fx(name)
    tol_loss, tol_int8, tol_mix = TOL.get(name, TOL["default"])
    theirs = fx.json(step, "summary.json")
    ours = json.loads((run / "search.json").read_text())
    n = 0
    flipped = set()
    defect = INTERPRETER_DEFECT.get(name)
    rel = REL_BY.get(name, REL)
    for o in ours["ops"]:
        t = theirs["layers"][o["op"]]
        if o["op"] == defect:
            n += 3
            continue
        if o["best_method"] != t["best_method"]:
            # only a near-tie may flip: TPU-MLIR's own losses of the two methods closer than float noise (tiny
            # nets: losses ~1e-7, and a threshold 2e-7 apart breaks a tie the tool sees as exact)
            a, b = t["methods"][o["best_method"]]["loss"], t["methods"][t["best_method"]]["loss"]
            assert abs(a - b) < tol_loss, (o["op"], o["best_method"], t["best_method"], a, b)
            flipped.add(o["op"])
        for c in o["candidates"]:
            tm = t["methods"][c["method"]]
            assert c["threshold"] == pytest.approx(tm["th"], rel=rel), (o["op"], c["method"])
            assert abs(c["loss"] - tm["loss"]) < tol_loss, (o["op"], c["method"], c["loss"], tm["loss"])
            n += 1
    assert n == 3 * len(theirs["layers"])
    if defect:  # the ranking without the op TPU-MLIR mis-scores; its similarities include the defect
        assert ours["float_layers"] == [x for x in theirs["ranking"] if x != defect][: len(ours["float_layers"])]
        return
    assert ours["float_layers"] == theirs["float_layers"]
    s = ours["summary"]
    assert round(s["int8"]["similarity"], 6) == pytest.approx(theirs["int8_outputs_cos"], abs=tol_int8)
    assert round(s["mix_new_table"]["similarity"], 6) == pytest.approx(theirs["mix_outputs_cos"], abs=tol_mix)
    assert_tables_close(run / "new_cali_table.txt", fx.file(step, "new_cali_table.txt"), rel, skip=flipped)
    qt = [line.split() for line in (run / "qtable").read_text().splitlines() if line and line[0] != "#"]
    theirs_qt = [line.split() for line in fx.file(step, "qtable").read_text().splitlines() if line and line[0] != "#"]
    assert qt == theirs_qt


@pytest.mark.zoo
def test_sensitive_debug_cmd_tune_steps(tmp_path, zoo):
    """``run_sensitive_layer.py --debug_cmd tune_steps=5`` (PNet, ``sensitive_tune_steps5/``): the flag reaches every
    method's SimpleTuner in TPU-MLIR and in qsens alike: the same tuned tables, losses, choices and qtable, and
    the tuned thresholds really move from the default run's."""
    from qsens.cli import main

    name = "mtcnn_pnet"
    fx = _fx(name)
    f = fx.flags
    assert any(c["cmd"].startswith("run_sensitive_layer.py") and "--debug_cmd tune_steps=5" in c["cmd"]
               for c in fx.meta["commands"])
    assert main(["search", str(O.model_path(fx)), "--dataset", _dataset(fx), "--input_num", str(f["input_num"]),
                 "--inference_num", str(f["inference_num"]), *_flag_args(fx), "--calibration_table",
                 str(fx.file("cali_table")), "--expected_cos", str(f["expected_cos"]), "--max_float_layers",
                 str(f["max_float_layers"]), "--debug_cmd", "tune_steps=5;debug_log", "--out_dir", str(tmp_path),
                 "-q"]) == 0
    for m in ("MAX", "Percentile9999", "KL"):
        for suffix in (".1", "_tune"):
            assert_tables_close(tmp_path / f"cali_table_{m}{suffix}", fx.file("sensitive_tune_steps5",
                                                                               f"cali_table_{m}{suffix}"))
    assert_search_equal(name, tmp_path, "sensitive_tune_steps5")
    _, five = _table(tmp_path / "cali_table_KL_tune")
    _, default = _table(fx.file("sensitive", "cali_table_KL_tune"))
    moved = [t for t in default if abs(five[t][0] - default[t][0]) > 1e-4 * default[t][0]]
    assert "prelu_PRelu" in moved and "prelu_2_PRelu" in moved, moved


# ------------------------------------------------------------------------------------------ live (harness)
HARNESS = Path(os.environ.get("QSENS_TPU_MLIR_HOME", Path.home() / ".cache/qsens/tpu_mlir")) / "1.23" / ".complete"


@pytest.mark.reference
@pytest.mark.skipif(not HARNESS.exists() or os.environ.get("QSENS_REFERENCE") != "1",
                    reason="opt-in: QSENS_REFERENCE=1 and the TPU-MLIR harness (bash reference/tpu_mlir/setup.sh 1.23)")
def test_live_generated_net(tmp_path, zoo):
    """Regenerate a fixture with the real TPU-MLIR and compare it with the committed one (same numbers)."""
    fx = _fx("gen_act")
    run = Path(__file__).parents[1] / "reference" / "tpu_mlir" / "run.py"
    shutil.copy(fx.file("gen_act.onnx"), tmp_path / "gen_act.onnx")
    out = tmp_path / "gen_act"
    f = fx.flags
    cmd = [sys.executable, str(run), str(tmp_path / "gen_act.onnx"), "--out", str(out), "--dataset", _dataset(fx),
           "--input_num", str(f["input_num"]), "--inference_num", str(f["inference_num"]), *_flag_args(fx),
           "--expected_cos", str(f["expected_cos"]), "--max_float_layers", str(f["max_float_layers"]),
           "--cali_methods", "", "--dump_num", "1"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    assert_tables_close(out / "cali_table", fx.file("cali_table"), rel=0)
    assert json.loads((out / "ops.json").read_text()) == fx.ops
    ref = fx.npz("int8", "int8.npz")
    with np.load(out / "int8" / "int8.npz") as z:
        for k in z.files:
            np.testing.assert_array_equal(z[k][0], ref[k][0], err_msg=k)
