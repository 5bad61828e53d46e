"""Real models from the zoo: qsens == onnxruntime, canonical op list named as TPU-MLIR names it."""

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qsens.onnx import to_jax
from qsens.pipeline import load_inputs, make_preprocess

pytestmark = pytest.mark.zoo

MODELS = [
    ("efficientnet_lite0.onnx", None, "efficientnet_lite0"),
    ("efficientnet_lite2.onnx", None, "efficientnet_lite2"),
    ("mtcnn_pnet.onnx", [[1, 3, 48, 64]], "mtcnn_pnet"),
    ("mtcnn_rnet.onnx", None, "mtcnn_rnet"),
    ("mtcnn_onet.onnx", None, "mtcnn_onet"),
]


def _real_inputs(zoo, graph, preset, n=12):
    files = sorted(str(p) for p in (zoo / "images").iterdir())[:n]
    return load_inputs(files, graph, make_preprocess(graph, preset=preset))


@pytest.mark.parametrize("name,shapes,preset", MODELS)
def test_matches_onnxruntime_on_real_images(zoo, name, shapes, preset):
    path = zoo / name
    fn, params = to_jax(path, shapes)
    x = _real_inputs(zoo, fn.graph, preset)
    got = jax.jit(fn)(params, x)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)
    assert list(got) == [o.name for o in onnx.load(str(path)).graph.output]
    for y, r in zip(got.values(), ref):
        y = np.asarray(y)
        assert y.shape == r.shape
        assert np.abs(y - r).max() / np.abs(r).max() <= 1e-4
        if r.ndim == 2 and r.shape[1] >= 2:
            np.testing.assert_array_equal(np.argmax(y, 1), np.argmax(r, 1))


def test_torchscript_export_equals_dynamo_export(zoo):
    fd, pd = to_jax(zoo / "efficientnet_lite0.onnx")
    ft, pt = to_jax(zoo / "efficientnet_lite0_op13.onnx")
    x = _real_inputs(zoo, fd.graph, "efficientnet_lite0", n=8)
    yd = np.asarray(jax.jit(fd)(pd, x)["logits"])
    yt = np.asarray(jax.jit(ft)(pt, x)["logits"])
    assert np.abs(yd - yt).max() / np.abs(yd).max() <= 1e-4
    np.testing.assert_array_equal(yd.argmax(1), yt.argmax(1))
    # both canonicalize to the same op structure (the TorchScript Pad subgraphs fold into the Convs)
    assert [op.type for op in fd.graph.ops] == [op.type for op in ft.graph.ops]
    assert len(ft.graph.ops) == 60  # two 1x1 projection convs merged into the next conv (Conv1x1Convkxk2dMerge)


def _expected_tpu_mlir_names(model: onnx.ModelProto) -> list[str]:
    """Derived by hand from the rule: '<first output>_<OpType>'; a Clip(0, 6) that follows a Conv is fused
    into it and gives it its name; a Conv without a Clip whose only consumer is a Conv (a 1x1 projection feeding
    the next block's 1x1 expansion or the head: TPU-MLIR's Conv1x1Convkxk2dMerge) is merged into that Conv, which
    keeps its own name; the Input op is named after the input."""
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names = [i.name for i in model.graph.input]
    for n in model.graph.node:
        if n.op_type == "Clip":
            continue  # fused into its Conv
        out = n.output[0]
        users = consumers.get(out, [])
        if n.op_type == "Conv" and len(users) == 1 and users[0].op_type == "Conv":
            continue  # merged into its consumer
        if n.op_type == "Conv" and len(users) == 1 and users[0].op_type == "Clip":
            names.append(f"{users[0].output[0]}_Clip")
        else:
            names.append(f"{out}_{n.op_type}")
    return names


def test_lite0_canonical_op_list(zoo):
    model = onnx.load(str(zoo / "efficientnet_lite0.onnx"))
    fn, _ = to_jax(model)
    g = fn.graph
    types = [op.type for op in g.ops]
    assert types.count("Input") == 1 and len(g.ops) == 60  # 59 quantizable ops + Input
    assert types.count("Conv") == 47 and types.count("Add") == 9
    assert types[-3:] == ["AvgPool", "Reshape", "MatMul"]
    assert list(g.op_names) == _expected_tpu_mlir_names(model)
    assert g.op_names[:4] == ("input", "hardtanh_Clip", "hardtanh_1_Clip", "hardtanh_2_Clip")
    assert g.op("hardtanh_2_Clip").onnx_nodes == ("node_Conv_800", "node_Conv_802", "n4_3")  # project + expand + Clip
    assert g.op_names[-3:] == ("mean_ReduceMean", "view_Reshape", "logits_Gemm")
    assert sum(1 for op in g.ops if op.attr("do_relu") and op.attr("relu_limit") == 6.0) == 33


def test_lite0_chunked_forward_equals_whole_batch(zoo):
    # the default CPU forward of 12 images runs as 2 chunks of 6 (lax.map); same logits as the whole batch
    fn, params = to_jax(zoo / "efficientnet_lite0.onnx")
    assert fn.model.chunk_for(12) == (6 if jax.default_backend() == "cpu" else 0)
    assert fn.model.chunk_for(12, 4) == 4 and fn.model.chunk_for(12, 0) == 0
    x = _real_inputs(zoo, fn.graph, "efficientnet_lite0")
    f = jax.jit(fn, static_argnames="chunk")
    a = np.asarray(f(params, x, chunk=4)["logits"])
    b = np.asarray(f(params, x, chunk=0)["logits"])
    assert np.abs(a - b).max() / np.abs(b).max() <= 1e-6
    np.testing.assert_array_equal(a.argmax(1), b.argmax(1))
