"""Fixed-batch models (the usual export for TPU-MLIR: input [1, 3, H, W], Reshape targets [1, -1]) run at any batch.

TPU-MLIR runs such a model sample by sample.  qsens rebinds the batch when the graph allows it (a Reshape target
whose leading entry is the deployment batch gets the new batch) and otherwise runs the ops that are not
sample-local once per sample (``Graph.per_sample``).  Either way a batch of 10 gives the outputs of 10
single-sample runs: through ``to_jax``'s function, the op-by-op :class:`qsens.engine.Engine` (calibration) and
calibration statistics.
"""

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from qsens.engine import Engine
from qsens.errors import ModelError
from qsens.onnx import to_jax
from tests.onnx_builders import init, make_model, vi

B = 10


def _ort_per_sample(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    outs = [s.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def _engine_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    e = Engine(model, len(x))
    env = e.run(e.input_env({model.graph.inputs[0]: x}))
    return {k: np.asarray(v) for k, v in e.outputs(env).items()}


def _check_batched_equals_single(m: onnx.ModelProto, x: np.ndarray, *, rebound: bool, rtol=1e-5):
    fn, params = to_jax(m)
    assert fn.model.canon.fixed_batch and fn.graph.batch == 1
    g = fn.model.graph_at(len(x))
    assert (g.per_sample == 0) == rebound
    assert g.input_shapes[0] == x.shape
    single = [jax.jit(fn)(params, x[i : i + 1]) for i in range(len(x))]
    ref = {k: np.concatenate([np.asarray(s[k]) for s in single]) for k in single[0]}
    got = {k: np.asarray(v) for k, v in jax.jit(fn)(params, x).items()}
    eng = _engine_outputs(fn.model, x)
    ort_ref = _ort_per_sample(m, x)
    for k, r in zip(ref, ort_ref):
        scale = np.abs(r).max()
        assert got[k].shape == ref[k].shape == eng[k].shape == r.shape
        assert np.abs(ref[k] - r).max() / scale <= 1e-5  # single-sample qsens == onnxruntime
        assert np.abs(got[k] - ref[k]).max() / scale <= rtol
        assert np.abs(eng[k] - ref[k]).max() / scale <= rtol
    return fn, g


def _conv_head(rng, c_in=3, c=8, hw=6):
    inits = [
        init("w1", rng.standard_normal((c, c_in, 3, 3)).astype(np.float32) * 0.3),
        init("b1", rng.standard_normal(c).astype(np.float32) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
    ]
    return nodes, inits


@pytest.mark.parametrize("target", [[1, -1], [1, 8 * 36]])
def test_reshape_with_leading_one_is_rebound(target):
    rng = np.random.default_rng(0)
    nodes, inits = _conv_head(rng)
    inits += [
        init("shape", np.array(target, np.int64)),
        init("fw", rng.standard_normal((8 * 36, 5)).astype(np.float32) * 0.1),
        init("fb", rng.standard_normal(5).astype(np.float32)),
    ]
    nodes += [
        helper.make_node("Reshape", ["r1", "shape"], ["flat"], name="rs"),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"], name="fc"),
        helper.make_node("Softmax", ["y"], ["p"], name="sm", axis=1),
    ]
    m = make_model(nodes, [vi("x", [1, 3, 6, 6])], [vi("p", [1, 5])], inits, opset=13)
    x = rng.standard_normal((B, 3, 6, 6)).astype(np.float32)
    fn, g = _check_batched_equals_single(m, x, rebound=True)
    assert g.tensor_shape("flat_Reshape") == (B, 8 * 36)
    assert fn.model.chunk_for(B, 5) == 5  # rebound and separable: the CPU forward may run it in chunks


def _channels_as_batch_model(rng):
    """x -> Conv -> Transpose(1,0,2,3) (channels become the batch) -> Conv 1->2 -> Reshape [1, 16, 6, 6] -> Conv."""
    nodes, inits = _conv_head(rng)
    inits += [
        init("w2", rng.standard_normal((2, 1, 3, 3)).astype(np.float32) * 0.5),
        init("s2", np.array([1, 16, 6, 6], np.int64)),
        init("w3", rng.standard_normal((4, 16, 1, 1)).astype(np.float32) * 0.3),
    ]
    nodes += [
        helper.make_node("Transpose", ["r1"], ["t1"], name="tr", perm=[1, 0, 2, 3]),
        helper.make_node("Conv", ["t1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c2", "s2"], ["rs2"], name="rs2"),
        helper.make_node("Conv", ["rs2", "w3"], ["y"], name="conv3"),
    ]
    return make_model(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", [1, 4, 6, 6])], inits, opset=13)


def _batch_folded_softmax_model(rng):
    """x -> Conv -> Reshape [8, 36] (batch folded away) -> Softmax(axis 1) -> Reshape [1, 8, 6, 6] -> Conv."""
    nodes, inits = _conv_head(rng)
    inits += [
        init("s1", np.array([8, 36], np.int64)),
        init("s2", np.array([1, 8, 6, 6], np.int64)),
        init("w3", rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3),
    ]
    nodes += [
        helper.make_node("Reshape", ["r1", "s1"], ["f"], name="rs1"),
        helper.make_node("Softmax", ["f"], ["sm"], name="sm", axis=1),
        helper.make_node("Reshape", ["sm", "s2"], ["u"], name="rs2"),
        helper.make_node("Conv", ["u", "w3"], ["y"], name="conv3"),
    ]
    return make_model(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", [1, 4, 6, 6])], inits, opset=13)


def _batch_mean_model(rng):
    """x -> Conv -> ReduceMean over axis 0 (a no-op at batch 1; over the batch if run batched) -> Sub."""
    nodes, inits = _conv_head(rng)
    nodes += [
        helper.make_node("ReduceMean", ["r1"], ["mu"], name="mean0", axes=[0], keepdims=1),
        helper.make_node("Sub", ["r1", "mu"], ["d"], name="sub"),
        helper.make_node("Add", ["d", "r1"], ["y"], name="add"),
    ]
    return make_model(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", [1, 8, 6, 6])], inits, opset=13)


@pytest.mark.parametrize("build", [_channels_as_batch_model, _batch_folded_softmax_model, _batch_mean_model])
def test_graphs_that_cannot_be_rebound_run_sample_by_sample(build):
    rng = np.random.default_rng(1)
    m = build(rng)
    x = rng.standard_normal((B, 3, 6, 6)).astype(np.float32)
    fn, g = _check_batched_equals_single(m, x, rebound=False)
    assert g.per_sample == B and g.batch == B
    per_sample = [op.name for op in g.ops if op.attr("per_sample")]
    assert per_sample and "r1_Relu" not in per_sample  # sample-local ops run on the whole batch
    assert fn.model.chunk_for(B, 5) == 0
    # every tensor holds the single-sample tensors stacked along axis 0
    for op in g.ops:
        for t, s in zip(op.outputs, op.out_shapes):
            s1 = fn.graph.tensor_shape(t)
            assert s == (B * s1[0],) + tuple(s1[1:])


def test_fixed_batch_two_runs_in_chunks_of_two():
    rng = np.random.default_rng(2)
    nodes, inits = _conv_head(rng)
    inits += [init("s1", np.array([16, 36], np.int64)), init("s2", np.array([2, 8, 6, 6], np.int64))]
    nodes += [
        helper.make_node("Reshape", ["r1", "s1"], ["f"], name="rs1"),
        helper.make_node("Softmax", ["f"], ["sm"], name="sm", axis=1),
        helper.make_node("Reshape", ["sm", "s2"], ["y"], name="rs2"),
    ]
    m = make_model(nodes, [vi("x", [2, 3, 6, 6])], [vi("y", [2, 8, 6, 6])], inits, opset=13)
    fn, params = to_jax(m)
    x = rng.standard_normal((6, 3, 6, 6)).astype(np.float32)
    assert fn.model.graph_at(6).per_sample == 3
    got = np.asarray(jax.jit(fn)(params, x)["y"])
    ref = np.concatenate([np.asarray(fn(params, x[i : i + 2])["y"]) for i in range(0, 6, 2)])
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ModelError, match="not a multiple"):
        fn(params, x[:5])


def _fixed_batch_lite0(zoo) -> onnx.ModelProto:
    """EfficientNet-Lite0 re-exported with a fixed batch of 1: input [1, 3, 224, 224], Reshape target [1, 1280]."""
    m = onnx.load(str(zoo / "efficientnet_lite0.onnx"))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    (rs,) = [n for n in m.graph.node if n.op_type == "Reshape"]
    for i in m.graph.initializer:
        if i.name == rs.input[1]:
            assert numpy_helper.to_array(i).tolist() == [-1, 1280]
            i.CopyFrom(numpy_helper.from_array(np.array([1, 1280], np.int64), i.name))
    return m


@pytest.mark.zoo
def test_fixed_batch_lite0_calibration_batch_10_equals_single_samples(zoo):
    from qsens.calibrate import collect_statistics
    from qsens.pipeline import load_inputs, make_preprocess

    m = _fixed_batch_lite0(zoo)
    fn, params = to_jax(m)
    g = fn.graph
    assert g.input_shapes == ((1, 3, 224, 224),) and fn.model.graph_at(B).per_sample == 0
    pp = make_preprocess(g, preset="efficientnet_lite0")
    files = sorted(str(p) for p in (zoo / "images").iterdir())[:B]
    x = load_inputs(files, g, pp)
    # forward: the batch of 10 == 10 single-sample runs == onnxruntime
    y = np.asarray(jax.jit(fn)(params, x)["logits"])
    y1 = np.concatenate(
        [np.asarray(jax.jit(fn)(params, {"input": x["input"][i : i + 1]})["logits"]) for i in range(B)]
    )
    r = _ort_per_sample(m, x["input"])[0]
    assert np.abs(y - y1).max() / np.abs(r).max() <= 1e-5
    assert np.abs(y - r).max() / np.abs(r).max() <= 1e-4
    # calibration statistics streamed op by op at batch 10 == at batch 1
    s10, _ = collect_statistics(fn.model, files, pp, methods=("max",), batch=B, progress=False)
    s1, _ = collect_statistics(fn.model, files, pp, methods=("max",), batch=1, progress=False)
    assert list(s10) == list(s1) == list(g.tensors)
    for t in g.tensors:
        a, b = s10[t], s1[t]
        scale = max(abs(float(b.min)), abs(float(b.max)), 1e-6)
        assert (
            abs(float(a.min) - float(b.min)) <= 1e-5 * scale
            and abs(float(a.max) - float(b.max)) <= 1e-5 * scale
        )
