"""Small generated ONNX models and datasets for the sensitive-layer search tests (no downloads)."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper

from tests.onnx_builders import init, make_model, vi  # noqa: F401  (shared ONNX helpers)


def resnet_ish(blocks: int = 2, hw: int = 12, channels: int = 6, classes: int = 7, seed: int = 0, batch="N"):
    """x -> Conv3x3+Relu -> blocks x [Conv3x3+Relu -> Conv1x1 -> Add(skip)] -> GAP -> Flatten -> Gemm.

    Canonical ops (TPU-MLIR names): Input, ``c0`` (Conv, fused relu, output ``r0_Relu``), per block
    ``r{k}a_Relu`` (Conv+relu), ``c{k}b_Conv`` (Conv), ``a{k}_Add`` (Add), then GAP, Flatten, Gemm:
    ``3 * blocks + 5`` ops.  Weights are random with a few large ones so the calibration methods disagree.
    """
    rng = np.random.default_rng(seed)
    C = channels

    def w(shape, scale):
        return rng.standard_normal(shape).astype(np.float32) * scale

    inits = [init("w0", w((C, 3, 3, 3), 0.4)), init("b0", w((C,), 0.1))]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
    ]
    prev = "r0"
    for k in range(blocks):
        inits += [
            init(f"w{k}a", w((C, C, 3, 3), 0.25)),
            init(f"b{k}a", w((C,), 0.1)),
            init(f"w{k}b", w((C, C, 1, 1), 0.4)),
            init(f"b{k}b", w((C,), 0.1)),
        ]
        nodes += [
            helper.make_node("Conv", [prev, f"w{k}a", f"b{k}a"], [f"c{k}a"], name=f"conv{k}a", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{k}a"], [f"r{k}a"], name=f"relu{k}a"),
            helper.make_node("Conv", [f"r{k}a", f"w{k}b", f"b{k}b"], [f"c{k}b"], name=f"conv{k}b"),
            helper.make_node("Add", [f"c{k}b", prev], [f"a{k}"], name=f"add{k}"),
        ]
        prev = f"a{k}"
    inits += [init("fc_w", w((classes, C), 0.5)), init("fc_b", w((classes,), 0.1))]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [vi("x", [batch, 3, hw, hw])], [vi("y", [batch, classes])], inits)


def conv_chain(hw: int = 10, seed: int = 1, batch="N"):
    """x -> Conv3x3 (c1) -> Conv3x3 (c2) -> Conv1x1 (c3) -> GAP -> Flatten -> Gemm (no relu: signed tensors).

    ``c1_Conv`` is the producer of ``c2_Conv``: ``c2``'s INT8 input cast uses ``c1``'s threshold.
    """
    rng = np.random.default_rng(seed)
    C = 5
    inits = [
        init("w1", rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.4),
        init("w2", rng.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.3),
        init("w3", rng.standard_normal((C, C, 1, 1)).astype(np.float32) * 0.5),
        init("fc_w", rng.standard_normal((4, C)).astype(np.float32) * 0.5),
        init("fc_b", rng.standard_normal(4).astype(np.float32) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [vi("x", [batch, 3, hw, hw])], [vi("y", [batch, 4])], inits)


def save(model, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def npy_dataset(root, n: int = 8, shape=(1, 3, 12, 12), seed: int = 0, outliers: int = 3) -> str:
    """``n`` heavy-tailed (Laplace) float32 samples ``s<k>.npy`` in ``root`` (created).

    ``outliers`` elements per sample are scaled by 8, so MAX, percentile, KL and MSE thresholds differ.
    """
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        a = rng.laplace(0.0, 1.0, shape).astype(np.float32)
        if outliers:
            a.flat[rng.integers(0, a.size, outliers)] *= 8.0
        np.save(os.path.join(root, f"s{k:02d}.npy"), a)
    return str(root)


def png_dataset(root, n: int = 6, hw: int = 12, seed: int = 0) -> str:
    """``n`` small random RGB PNG images ``img<k>.png`` in ``root`` (created)."""
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        a = rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8)
        Image.fromarray(a).save(os.path.join(root, f"img{k:02d}.png"))
    return str(root)
