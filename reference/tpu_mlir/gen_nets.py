#!/usr/bin/env python3
"""Small generated ONNX nets that exercise BM1684 INT8 kernels and TPU-MLIR's calibration post-processing.

    python reference/tpu_mlir/gen_nets.py OUT_DIR

Deterministic (seeded weights, byte-identical files). Each net takes a 1x3x16x16 image
(``--resize_dims 16,16 --mean 127.5,127.5,127.5 --scale 0.0078125,0.0078125,0.0078125``).

* ``gen_act``: Conv -> PRelu whose output has two consumers (MaxPool and a strided Conv), a Conv output
  with two consumers (LeakyRelu and Add), LeakyRelu -> Conv, Add with fused Relu, Concat of two branches,
  GlobalAveragePool -> Flatten -> Gemm.
* ``gen_pool``: Conv -> Relu (fused) -> MaxPool -> Conv -> PRelu (single use) -> AveragePool 3x3 ->
  Conv -> Sigmoid, Conv(bias-free) + Add with a second Conv, Concat whose inputs are only used by it.
* ``gen_we``: the pairs weight equalization (``--we``) looks for (see :func:`gen_we`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class B:
    def __init__(self, name: str, seed: int):
        self.name, self.rng = name, np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def w(self, shape, scale=None):
        self.n += 1
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        a = self.rng.normal(0, scale or (1.5 / np.sqrt(fan)), shape).astype(np.float32)
        nm = f"w{self.n}"
        self.inits.append(numpy_helper.from_array(a, nm))
        return nm

    def node(self, op, ins, **attrs):
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def conv(self, x, cin, cout, k=3, stride=1, pad=1, bias=True, group=1):
        ins = [x, self.w((cout, cin // group, k, k))]
        if bias:
            ins.append(self.w((cout,), 0.2))
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)

    def i64(self, value):
        """An int64 constant initializer (shapes)."""
        self.n += 1
        nm = f"i{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), nm))
        return nm

    def c(self, value):
        """A float32 constant initializer (exact value, given shape)."""
        self.n += 1
        nm = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), nm))
        return nm

    def save(self, out: Path, y, yshape, more=(), opset: int = 13):
        outs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, yshape)]
        outs += [helper.make_tensor_value_info(t, TensorProto.FLOAT, s) for t, s in more]
        g = helper.make_graph(self.nodes, self.name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="qsens-gen")
        m.ir_version = 8
        onnx.checker.check_model(m)
        onnx.save(m, out / f"{self.name}.onnx")


def gen_act(out: Path):
    b = B("gen_act", 1684)
    c1 = b.conv("input", 3, 8)
    p1 = b.node("PRelu", [c1, b.w((8, 1, 1), 0.3)])
    mp = b.node("MaxPool", [p1], kernel_shape=[2, 2], strides=[2, 2])
    c2 = b.conv(p1, 8, 8, stride=2)
    c3 = b.conv(mp, 8, 8)
    lr = b.node("LeakyRelu", [c3], alpha=0.1)
    add = b.node("Add", [c2, c3])
    r = b.node("Relu", [add])
    c4 = b.conv(lr, 8, 8, k=1, pad=0)
    cat = b.node("Concat", [c4, r], axis=1)
    gap = b.node("GlobalAveragePool", [cat])
    fl = b.node("Flatten", [gap], axis=1)
    y = b.node("Gemm", [fl, b.w((10, 16)), b.w((10,), 0.2)], transB=1)
    b.save(out, y, [1, 10])


def gen_pool(out: Path):
    b = B("gen_pool", 1685)
    c1 = b.conv("input", 3, 8)
    r1 = b.node("Relu", [c1])
    mp = b.node("MaxPool", [r1], kernel_shape=[2, 2], strides=[2, 2])
    c2 = b.conv(mp, 8, 8)
    p2 = b.node("PRelu", [c2, b.w((8, 1, 1), 0.3)])
    ap = b.node("AveragePool", [p2], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    c3 = b.conv(ap, 8, 8, bias=False)
    c4 = b.conv(ap, 8, 8, k=1, pad=0)
    add = b.node("Add", [c3, c4])
    c5 = b.conv(add, 8, 4, k=1, pad=0)
    c6 = b.conv(add, 8, 4, stride=2)
    sg = b.node("Sigmoid", [c5])
    c7 = b.conv(sg, 4, 4, stride=2)
    cat = b.node("Concat", [c7, c6], axis=1)
    y = b.conv(cat, 8, 6, k=1, pad=0)
    b.save(out, y, [1, 6, 4, 4])


def gen_const(out: Path):
    """Constant-operand ops and the rest of issue 12's BM1684 list: SubConst (c - x), Div by a constant (MulConst),
    Add/Mul of a per-channel weight (Scale), a lone BatchNormalization (Scale), HardSigmoid(alpha 0.2) and Exp
    lookup tables, Clip(-1, 2) (F32), Div of two activations (F32), Pad with a non-zero value, ReduceMean over H, W
    (AvgPool), Tanh, ConvTranspose + Relu, Conv -> Mul(0.5) -> Sub(0.25) -> Mul(per channel), Concat of an unsigned
    and two signed inputs (requantized)."""
    b = B("gen_const", 1686)
    c1 = b.conv("input", 3, 8)
    sc = b.node("Sub", [b.c(0.5), c1])
    dv = b.node("Div", [sc, b.c(3.0)])
    ad = b.node("Add", [dv, b.w((1, 8, 1, 1), 0.5)])
    ml = b.node("Mul", [ad, b.c(b.rng.uniform(0.5, 1.5, (8, 1, 1)))])
    bn = b.node("BatchNormalization", [ml, b.c(b.rng.uniform(0.5, 1.5, 8)), b.w((8,), 0.2),
                                       b.w((8,), 0.3), b.c(b.rng.uniform(0.5, 2.0, 8))], epsilon=1e-5)
    hs = b.node("HardSigmoid", [bn], alpha=0.2, beta=0.5)
    c2 = b.conv(hs, 8, 8)
    ex = b.node("Exp", [c2])
    cl = b.node("Clip", [c2, b.c(-1.0), b.c(2.0)])
    q = b.node("Div", [cl, ex])
    c3 = b.conv(q, 8, 8)
    pads = f"pads{b.n}"
    b.inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), pads))
    pd = b.node("Pad", [c3, pads, b.c(0.5)], mode="constant")
    c4 = b.conv(pd, 8, 8, pad=0)
    c5 = b.conv(c4, 8, 8, stride=2)
    rm = b.node("ReduceMean", [c5], axes=[2, 3], keepdims=1)
    th = b.node("Tanh", [c5])
    dc = b.node("ConvTranspose", [th, b.w((8, 4, 2, 2)), b.w((4,), 0.2)], kernel_shape=[2, 2], strides=[2, 2])
    r = b.node("Relu", [dc])
    c6 = b.conv(c4, 8, 8)
    m6 = b.node("Mul", [c6, b.c(0.5)])
    a6 = b.node("Sub", [m6, b.c(0.25)])
    s6 = b.node("Mul", [a6, b.c(b.rng.uniform(0.5, 1.5, (1, 8, 1, 1)))])
    cat = b.node("Concat", [r, c4, s6], axis=1)
    y = b.conv(cat, 20, 4, k=1, pad=0)
    b.save(out, y, [1, 4, 16, 16], more=[(rm, [1, 8, 1, 1])])


def gen_wconst(out: Path):
    """Add/Mul of a full-tensor weight (neither scalar nor per channel) and a Concat with a weight input."""
    b = B("gen_wconst", 1687)
    c1 = b.conv("input", 3, 8)
    ml = b.node("Mul", [c1, b.c(b.rng.uniform(-1.5, 1.5, (1, 8, 16, 16)))])
    c2 = b.conv(ml, 8, 8)
    ad = b.node("Add", [c2, b.c(b.rng.uniform(-0.5, 0.5, (1, 8, 16, 16)))])
    mu = b.node("Mul", [ad, b.c(b.rng.uniform(0.2, 1.0, (1, 8, 16, 16)))])  # an unsigned weight
    cat = b.node("Concat", [mu, b.c(b.rng.uniform(-1, 1, (1, 2, 16, 16)))], axis=1)
    y = b.conv(cat, 10, 4, k=1, pad=0)
    b.save(out, y, [1, 4, 16, 16])


def gen_we(out: Path):
    """Cross-layer equalization's pairs (``--we``): Conv -> Relu -> depthwise Conv, depthwise Conv -> Clip(0, 6) ->
    Conv 1x1, Conv -> PRelu -> Conv, Conv -> Conv, and a Conv whose LeakyRelu feeds two Convs (not a pair); channel
    ranges spread over two decades so the scales differ from 1."""
    b = B("gen_we", 1688)

    def spread(nm, axis):  # multiply each output (axis 0) or input (axis 1) channel by 10^U(-1, 1)
        i = next(k for k, t in enumerate(b.inits) if t.name == nm)
        a = numpy_helper.to_array(b.inits[i]).copy()
        f = (10.0 ** b.rng.uniform(-1, 1, a.shape[axis])).astype(np.float32)
        a *= f.reshape([-1 if d == axis else 1 for d in range(a.ndim)])
        b.inits[i] = numpy_helper.from_array(a, nm)

    c1 = b.conv("input", 3, 8)
    spread(b.nodes[-1].input[1], 0)
    r1 = b.node("Relu", [c1])
    c2 = b.conv(r1, 8, 8, group=8)
    spread(b.nodes[-1].input[1], 0)
    r2 = b.node("Clip", [c2, b.c(0.0), b.c(6.0)])
    c3 = b.conv(r2, 8, 16, k=1, pad=0)
    spread(b.nodes[-1].input[1], 1)
    p3 = b.node("PRelu", [c3, b.w((16, 1, 1), 0.3)])
    c4 = b.conv(p3, 16, 8)
    c5 = b.conv(c4, 8, 8)
    lr = b.node("LeakyRelu", [c5], alpha=0.1)
    c6 = b.conv(lr, 8, 4, k=1, pad=0)
    c7 = b.conv(lr, 8, 4, k=1, pad=0)
    y = b.node("Add", [c6, c7])
    b.save(out, y, [1, 4, 16, 16])


def _tokens_ln(b: B) -> str:
    """The transformer nets' prelude: 4x4 Conv patches -> [1, 16, 8] tokens (Reshape, Transpose) -> LayerNormalization
    (opset 17) whose gain spreads over two decades; returns the LayerNorm's output."""
    x = b.conv("input", 3, 8, k=4, stride=4, pad=0)
    r = b.node("Reshape", [x, b.i64([1, 8, 16])])
    t = b.node("Transpose", [r], perm=[0, 2, 1])
    gain = b.c((10.0 ** b.rng.uniform(-1, 1, 8)).astype(np.float32))
    return b.node("LayerNormalization", [t, gain, b.w((8,), 0.3)], axis=-1, epsilon=1e-5)


def gen_sq(out: Path):
    """SmoothQuant's patterns (``--sq``): a LayerNorm whose users are two MatMuls, and a Mul by a per-channel weight
    whose user is a MatMul, on a token sequence (Conv patches -> Reshape -> Transpose, opset 17 LayerNormalization);
    the LayerNorm gain and the Mul weight spread over two decades so the activation ranges differ per channel."""
    b = B("gen_sq", 1690)
    ln = _tokens_ln(b)
    m1 = b.node("MatMul", [ln, b.w((8, 12))])
    m2 = b.node("MatMul", [ln, b.w((8, 6))])
    g = b.node("Relu", [m1])
    mu = b.node("Mul", [g, b.c((10.0 ** b.rng.uniform(-1, 1, 12)).astype(np.float32))])
    m3 = b.node("MatMul", [mu, b.w((12, 8))])
    b.save(out, m3, [1, 16, 8], more=[(m2, [1, 16, 6])], opset=17)


def gen_sq_reshape(out: Path):
    """SmoothQuant through reshape-like users (TPU-MLIR ``skip_reshape_like_users``): a LayerNorm whose users are a
    Reshape [1,16,8] -> [16,8] (last dim kept) in front of a MatMul and a MatMul directly, and a Mul whose user is a
    Reshape back to [1,16,12] in front of a MatMul."""
    b = B("gen_sq_reshape", 1691)
    ln = _tokens_ln(b)
    flat = b.node("Reshape", [ln, b.i64([16, 8])])
    m1 = b.node("MatMul", [flat, b.w((8, 12))])
    m2 = b.node("MatMul", [ln, b.w((8, 6))])
    g = b.node("Relu", [m1])
    mu = b.node("Mul", [g, b.c((10.0 ** b.rng.uniform(-1, 1, 12)).astype(np.float32))])
    back = b.node("Reshape", [mu, b.i64([1, 16, 12])])
    m3 = b.node("MatMul", [back, b.w((12, 8))])
    b.save(out, m3, [1, 16, 8], more=[(m2, [1, 16, 6])], opset=17)


def gen_attn(out: Path):
    """A BERT-style self-attention block for SmoothQuant's v-projection case (``is_vproj_matmul``): LayerNorm -> q, k,
    v MatMuls with biases; v -> Reshape -> Transpose -> MatMul(probs, v) -> Transpose -> Reshape -> o MatMul, the
    shapes mirrored as TPU-MLIR's test requires; the v weights' columns and the LayerNorm gain spread over two
    decades."""
    b = B("gen_attn", 1692)
    ln = _tokens_ln(b)

    def proj(col_spread=False):
        w = b.w((8, 8))
        if col_spread:
            w = b.c((np.asarray(b.rng.normal(0, 0.3, (8, 8))) * 10.0 ** b.rng.uniform(-1, 1, 8)).astype(np.float32))
        return b.node("Add", [b.node("MatMul", [ln, w]), b.w((8,), 0.1)])

    q, k, v = proj(), proj(), proj(col_spread=True)
    qh = b.node("Transpose", [b.node("Reshape", [q, b.i64([1, 16, 2, 4])])], perm=[0, 2, 1, 3])
    kh = b.node("Transpose", [b.node("Reshape", [k, b.i64([1, 16, 2, 4])])], perm=[0, 2, 3, 1])
    vh = b.node("Transpose", [b.node("Reshape", [v, b.i64([1, 16, 2, 4])])], perm=[0, 2, 1, 3])
    sc = b.node("Mul", [b.node("MatMul", [qh, kh]), b.c(np.array(0.5, np.float32))])
    pr = b.node("Softmax", [sc], axis=-1)
    ctx = b.node("MatMul", [pr, vh])
    cm = b.node("Reshape", [b.node("Transpose", [ctx], perm=[0, 2, 1, 3]), b.i64([1, 16, 8])])
    o = b.node("Add", [b.node("MatMul", [cm, b.w((8, 8))]), b.w((8,), 0.1)])
    b.save(out, o, [1, 16, 8], opset=17)


def gen_sq_ln(out: Path):
    """SmoothQuant's ``insert_mul_after_ln`` (post-LN, BERT-style): a LayerNorm whose users are exactly a MatMul and
    the residual Add; TPU-MLIR inserts a Mul by ones between the LayerNorm and the MatMul and smooths that Mul."""
    b = B("gen_sq_ln", 1693)
    ln = _tokens_ln(b)
    m1 = b.node("MatMul", [ln, b.w((8, 12))])
    g = b.node("Relu", [m1])
    m2 = b.node("MatMul", [g, b.w((12, 8))])
    y = b.node("Add", [ln, m2])
    b.save(out, y, [1, 16, 8], opset=17)


def main(argv=None):
    out = Path((argv or sys.argv[1:])[0])
    out.mkdir(parents=True, exist_ok=True)
    gen_act(out)
    gen_pool(out)
    gen_const(out)
    gen_wconst(out)
    gen_we(out)
    gen_sq(out)
    gen_sq_reshape(out)
    gen_attn(out)
    gen_sq_ln(out)


if __name__ == "__main__":
    main()
