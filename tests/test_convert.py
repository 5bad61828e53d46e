"""Converter: canonical graph, numerics against onnxruntime, no recompilation, taps, naming."""

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qsens.errors import ModelError, UnsupportedOpError
from qsens.onnx import to_jax
from tests.onnx_builders import conv_bn_relu_model, init, make_model, vi


def ort_run(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


@pytest.mark.parametrize("relu", ["Relu", "Clip"])
def test_small_model_matches_onnxruntime_and_canonical_form(relu):
    m = conv_bn_relu_model(relu=relu)
    fn, params = to_jax(m)
    g = fn.graph
    # BN folded into conv1, ReLU fused: the fused op takes the ReLU's name (TPU-MLIR rule)
    relu_name = "r1_Relu" if relu == "Relu" else "r1_Clip"
    assert g.op_names == ("x", relu_name, "c2_Conv", "a1_Add", "gap_GlobalAveragePool", "flat_Flatten", "y_Gemm")
    assert [op.type for op in g.ops] == ["Input", "Conv", "Conv", "Add", "AvgPool", "Reshape", "MatMul"]
    c1 = g.ops[1]
    assert c1.attr("do_relu") is True
    assert c1.attr("relu_limit") == (-1.0 if relu == "Relu" else 6.0)
    assert c1.onnx_nodes == ("conv1", "bn1", "relu1" if relu == "Relu" else "clip1")
    # params hold float weights only; BN params folded away, Clip bounds static
    assert set(params) == {"w1@bn", "bn1@bn_bias", "w2", "fc_w", "fc_b"}
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.asarray(jax.jit(fn)(params, {"x": x})["y"])
    (r,) = ort_run(m, {"x": x})
    assert np.abs(y - r).max() / np.abs(r).max() < 1e-5


def test_bn_fold_is_within_1e6_relative():
    m = conv_bn_relu_model(seed=3)
    # model without relu/downstream: compare the folded conv alone against ORT's conv+bn output
    fn, params = to_jax(m)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _, taps = fn(params, {"x": x}, taps=("r1_Relu",))
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    m2.graph.output.append(vi("r1", [None, 8, 8, 8]))
    ref = ort_run(m2, {"x": x})[1]
    got = np.asarray(taps["r1_Relu"])
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-6


def test_no_recompilation_when_weights_or_inputs_change():
    m = conv_bn_relu_model()
    fn, params = to_jax(m)
    traces = []

    def counted(p, x):
        traces.append(1)
        return fn(p, {"x": x})["y"]

    f = jax.jit(counted)
    x = np.ones((2, 3, 8, 8), np.float32)
    f(params, x)
    p2 = {k: v * 1.5 for k, v in params.items()}
    f(p2, x + 1.0)
    f(p2, x * 3.0)
    assert len(traces) == 1
    # a new batch size is a new shape: one more trace, same graph
    f(params, np.ones((5, 3, 8, 8), np.float32))
    assert len(traces) == 2


def test_taps_return_intermediate_tensors_and_batch_rebinding():
    m = conv_bn_relu_model(batch="N")
    fn, params = to_jax(m)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    outs, taps = jax.jit(fn, static_argnames="taps")(params, {"x": x}, taps=("c2_Conv", "a1_Add"))
    assert taps["c2_Conv"].shape == (3, 8, 8, 8)
    np.testing.assert_allclose(np.asarray(taps["a1_Add"]).mean(axis=(2, 3)).reshape(3, 8) @ np.asarray(params["fc_w"]).T
                               + np.asarray(params["fc_b"]), np.asarray(outs["y"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match="not canonical tensors"):
        fn(params, {"x": x}, taps=("nope",))


def test_name_style_onnx():
    fn, _ = to_jax(conv_bn_relu_model(), name_style="onnx")
    assert fn.graph.op_names == ("x", "r1", "c2", "a1", "gap", "flat", "y")


def test_shape_chain_folding_and_pad_fusion():
    """A TorchScript-style Shape/Gather/Concat -> Reshape chain folds; a zero Pad fuses into the Conv."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad"),
        helper.make_node("Conv", ["xp", "w"], ["c"], name="conv", strides=[2, 2]),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero_i"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["shp"], name="cat", axis=0),
        helper.make_node("Reshape", ["c", "shp"], ["y"], name="reshape"),
    ]
    inits = [init("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)),
             init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("zero_i", np.array(0, np.int64)), init("axes0", np.array([0], np.int64)),
             init("minus1", np.array([-1], np.int64))]
    m = make_model(nodes, [vi("x", ["N", 3, 9, 9])], [vi("y", ["N", None])], inits, opset=13)
    fn, params = to_jax(m)
    assert fn.graph.op_names == ("x", "c_Conv", "y_Reshape")
    assert fn.graph.ops[1].attr("pads") == (0, 0, 1, 1)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    y = np.asarray(fn(params, {"x": x})["y"])
    (r,) = ort_run(m, {"x": x})
    assert y.shape == r.shape == (2, 64)
    assert np.abs(y - r).max() / np.abs(r).max() < 1e-5


def test_maxpool_ceil_mode_prelu_softmax_vs_ort():
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
        helper.make_node("MaxPool", ["p"], ["mp"], name="mp", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("Transpose", ["mp"], ["t"], name="tr", perm=[0, 2, 3, 1]),
        helper.make_node("Softmax", ["t"], ["y"], name="sm", axis=-1),
    ]
    inits = [init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("slope", rng.uniform(0, 0.3, (4, 1, 1)).astype(np.float32))]
    m = make_model(nodes, [vi("x", [1, 3, 12, 12])], [vi("y", None)], inits)
    fn, params = to_jax(m)
    assert [op.type for op in fn.graph.ops] == ["Input", "Conv", "PRelu", "MaxPool", "Permute", "Softmax"]
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    y = np.asarray(fn(params, x)["y"])
    (r,) = ort_run(m, {"x": x})
    assert y.shape == r.shape == (1, 5, 5, 4)
    assert np.abs(y - r).max() / np.abs(r).max() < 1e-5


# ---------------------------------------------------------------------------------------------- errors
def test_missing_truncated_and_non_onnx_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        to_jax(tmp_path / "nope.onnx")
    good = conv_bn_relu_model().SerializeToString()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="trunc.onnx.*(truncated|not ONNX)"):
        to_jax(tmp_path / "trunc.onnx")
    (tmp_path / "text.onnx").write_text("hello, I am not a model\n" * 10)
    with pytest.raises(ModelError, match="text.onnx"):
        to_jax(tmp_path / "text.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty.onnx"):
        to_jax(tmp_path / "empty.onnx")


def test_unsupported_op_message_names_node_type_opset_and_supported_list():
    m = make_model([helper.make_node("NonMaxSuppression", ["x"], ["y"], name="nms_1")],
                   [vi("x", [1, 4])], [vi("y", [1, 4])], opset=17)
    with pytest.raises(UnsupportedOpError) as e:
        to_jax(m)
    msg = str(e.value)
    assert "'nms_1'" in msg and "NonMaxSuppression" in msg and "opset 17" in msg and "Conv" in msg
    assert "\n" not in msg


def test_dynamic_non_batch_dim_needs_input_shapes():
    m = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", ["N", 3, "H", "W"])], [vi("y", None)])
    with pytest.raises(ModelError, match=r"input 'x' dim 2 \(H\) is dynamic; pass --input_shapes"):
        to_jax(m)
    fn, params = to_jax(m, input_shapes=[[1, 3, 20, 24]])
    assert fn.graph.input_shapes == ((1, 3, 20, 24),)
    with pytest.raises(ModelError, match="gives 2 shape"):
        to_jax(m, input_shapes=[[1, 3, 4, 4], [1, 2]])


# --- chunked CPU forward (Model.apply runs the batch in chunks of CPU_CHUNK when the graph allows it) ---


def test_chunked_forward_equals_whole_batch_with_padding_and_taps():
    m = conv_bn_relu_model(batch="N")
    fn, params = to_jax(m)
    x = np.random.default_rng(5).standard_normal((11, 3, 8, 8)).astype(np.float32)  # 11 = 3 chunks of 4, padded
    f = jax.jit(fn, static_argnames=("taps", "chunk"))
    assert fn.model.chunk_for(11, 4) == 4 and fn.model.chunk_for(11, 0) == 0 and fn.model.chunk_for(4, 4) == 0
    o1, t1 = f(params, {"x": x}, taps=("c2_Conv",), chunk=4)
    o0, t0 = f(params, {"x": x}, taps=("c2_Conv",), chunk=0)
    assert o1["y"].shape == (11, 5) and t1["c2_Conv"].shape == t0["c2_Conv"].shape
    np.testing.assert_allclose(np.asarray(o1["y"]), np.asarray(o0["y"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(t1["c2_Conv"]), np.asarray(t0["c2_Conv"]), rtol=1e-6, atol=1e-6)
    (r,) = ort_run(m, {"x": x})
    assert np.abs(np.asarray(o1["y"]) - r).max() / np.abs(r).max() < 1e-5
    # the default on CPU is at most CPU_CHUNK (8) per step, steps evened out: 11 -> 2 steps of 6, 32 -> 4 of 8
    from qsens.onnx.convert import CPU_CHUNK

    assert CPU_CHUNK == 8 and fn.model.chunk_for(11) == 6 and fn.model.chunk_for(32) == 8
    assert fn.model.chunk_for(10, 4) == 4 and fn.model.chunk_for(9, 4) == 3 and fn.model.chunk_for(8) == 0


def _softmax_model(axis):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Softmax", ["r"], ["y"], name="sm", axis=axis)]
    return make_model(nodes, [vi("x", ["N", 6])], [vi("y", ["N", 6])], [], opset=13)


def test_graphs_that_mix_samples_are_never_chunked():
    # softmax over the batch axis keeps every shape but mixes samples
    fn0, _ = to_jax(_softmax_model(0))
    fn1, p1 = to_jax(_softmax_model(1))
    assert fn0.model.chunk_for(16, 4) == 0 and fn1.model.chunk_for(16, 4) == 4
    x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    fn0p = to_jax(_softmax_model(0))
    y0 = np.asarray(jax.jit(fn0p[0])(fn0p[1], {"x": x})["y"])
    ((r0,),) = [ort_run(_softmax_model(0), {"x": x})]
    assert np.abs(y0 - r0).max() < 1e-6  # whole batch at once, as onnxruntime
    # a reshape that merges the batch into another dim: shape check rejects it
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")]
    m = make_model(nodes, [vi("x", [16, 6])], [vi("y", None)], [init("s", np.array([8, 12], np.int64))], opset=13)
    fnr, _ = to_jax(m)
    assert fnr.model.chunk_for(16, 4) == 0  # fixed batch: not rebindable either
    assert fn1.model.chunk_for(16, 4) == 4


def test_depthwise_per_op_and_whole_graph_formulations_agree():
    from qsens.onnx.layout import conv2d_nhwc, per_op_executable

    rng = np.random.default_rng(3)
    for k, s, pads in [(3, 1, (1, 1, 1, 1)), (5, 2, (1, 2, 2, 1)), (3, 2, (0, 0, 1, 1))]:
        x = rng.standard_normal((2, 11, 13, 24)).astype(np.float32)
        w = rng.standard_normal((24, 1, k, k)).astype(np.float32)
        b = rng.standard_normal(24).astype(np.float32)
        kw = dict(strides=(s, s), pads=pads, dilations=(1, 1), group=24)
        whole = jax.jit(lambda x, w, b, kw=kw: conv2d_nhwc(x, w, b, **kw))(x, w, b)

        def per_op(x, w, b, kw=kw):
            with per_op_executable():
                return conv2d_nhwc(x, w, b, **kw)

        one = jax.jit(per_op)(x, w, b)
        # same products, same tree order; only FMA contraction differs (padding sits between mul and add)
        np.testing.assert_allclose(np.asarray(whole), np.asarray(one), rtol=1e-6, atol=2e-6)
        ref = jax.lax.conv_general_dilated(
            x, np.transpose(w, (2, 3, 1, 0)), (s, s), ((pads[0], pads[2]), (pads[1], pads[3])),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=24,
            precision=jax.lax.Precision.HIGHEST) + b
        np.testing.assert_allclose(np.asarray(whole), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_tree_sum_order():
    from qsens.onnx.layout import tree_sum

    class T:
        def __init__(self, s):
            self.s = s

        def __add__(self, o):
            return T(f"({self.s}+{o.s})")

    assert tree_sum([T(c) for c in "abcde"]).s == "(((a+b)+(c+d))+e)"
    assert tree_sum([T("a")]).s == "a"


def test_host_memory_policy_is_on_by_default_and_can_be_turned_off():
    import subprocess
    import sys

    code = "import qsens.hostmem as h; print(h.keep_freed_memory())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import os

    env = dict(os.environ, QSENS_MALLOC="system")
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert off == "False"
    assert on == ("True" if sys.platform.startswith("linux") else "False")
    # imported after JAX's first computation: the policy cannot reach XLA's threads any more, and says so
    late = subprocess.run([sys.executable, "-W", "always", "-c", "import jax.numpy as jnp; jnp.ones(2) + 1; import qsens"],
                          capture_output=True, text=True, check=True)
    if on == "True":
        assert "qsens was imported after JAX started its CPU backend" in late.stderr
    early = subprocess.run([sys.executable, "-W", "always", "-c", "import jax; import qsens"],
                           capture_output=True, text=True, check=True)
    assert "imported after JAX" not in early.stderr
