"""Channel-last (NHWC) execution of NCHW graphs: the float fast path.

The canonical graph keeps ONNX's NCHW semantics.  When it is run, 4-D activations flowing between
layout-friendly ops are kept channel-last, because XLA-CPU runs a 1x1 convolution as a plain dot over the
minor (channel) dim about 5x faster than the NCHW einsum (measured: 32x144x56x56 -> 24 channels,
8.4 ms vs 42.6 ms; see README "Performance").  Ops without an NHWC form get NCHW inputs (one transpose at
the boundary); graph outputs and taps are always returned in NCHW, so the layout never shows.

Each NHWC implementation here is numerically the same computation as its NCHW twin in ``ops/`` (same
summation order per output element is not guaranteed: results agree to float32 rounding, tested against
onnxruntime to 1e-5 relative).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .ir import Op
from .registry import CHAIN

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Relu", "Clip", "PRelu", "LeakyRelu", "Sigmoid",
               "HardSigmoid", "HardSwish", "Tanh", "Exp", "Abs", "Neg", "Sqrt", "Erf", "Elu", "Softplus", "Gelu",
               "Identity", "Floor", "Ceil", "Reciprocal", "Log", "Pow", CHAIN}


_DW_PRODUCTS: contextvars.ContextVar = contextvars.ContextVar("qsens_dw_products", default=False)


@contextlib.contextmanager
def per_op_executable():
    """Trace-time switch: the code being traced is one op on its own (see ``conv2d_nhwc``'s depthwise path)."""
    tok = _DW_PRODUCTS.set(True)
    try:
        yield
    finally:
        _DW_PRODUCTS.reset(tok)


def _native() -> bool:
    return jax.default_backend() != "cpu"


def _perm_const(a, rank4: bool):
    """A broadcastable NCHW operand as its NHWC twin, or None when that is not a pure permutation."""
    a = np.asarray(a) if not isinstance(a, jax.Array) else a
    nd = a.ndim
    if nd == 0 or (int(np.prod(a.shape)) == 1):
        return a
    if nd == 4:
        return jnp.transpose(a, TO_NHWC)
    if nd == 3:  # (C, H, W) broadcast against (N, C, H, W)
        return jnp.transpose(a, (1, 2, 0))
    return None


def nhwc_ok(op: Op, in_shapes: list[tuple[int, ...]], weights: dict, consts: dict) -> bool:
    """Whether ``op`` has an NHWC implementation for these (static) input shapes."""
    t = op.onnx_type
    if not in_shapes or any(len(s) != 4 for s in in_shapes):
        return False
    if op.out_shapes and any(len(s) != 4 for s in op.out_shapes):
        return False
    if t == "Conv":
        w = weights.get("filter")
        return w is not None and w.ndim == 4 and len(op.inputs) == 1
    if t in ("MaxPool", "AveragePool"):
        return len(op.outputs) == 1 and op.attr("dilations", (1, 1)) == (1, 1)
    if t in ("GlobalAveragePool", "GlobalMaxPool"):
        return True
    if t == "ReduceMean":
        return op.type == "AvgPool"
    if t == "BatchNormalization":
        return True
    if t == "Concat":
        return all(np.ndim(v) == 4 for v in list(weights.values()) + list(consts.values()) if v is not None)
    if t == CHAIN and any(st not in ELEMENTWISE or st == CHAIN for st, _a, _x in op.attr("chain")):
        return False  # a fused Conv / BatchNormalization chain runs NCHW
    if t in ELEMENTWISE:
        if len(set(in_shapes)) != 1:
            return False
        for v in list(weights.values()) + [c for c in consts.values()]:
            if v is None:
                continue
            if t == "Clip":
                continue
            if _perm_const(v, True) is None:
                return False
        return True
    return False


def tree_sum(terms: list):
    """Sum a list of arrays as a balanced binary tree ((t0+t1)+(t2+t3))+..., a fixed, documented order.

    A left-to-right chain makes the fused loop one serial chain of k*k dependent adds per output vector
    (latency-bound); the tree gives the CPU independent adds.  Measured: 32x14x14x672 depthwise 5x5,
    9.2 -> 4.1 ms.  Results differ from the chain by float32 rounding only.
    """
    terms = list(terms)
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


def conv_out_size(n: int, pad0: int, pad1: int, k: int, dilation: int, stride: int) -> int:
    """Output length of a convolution along one spatial dim."""
    return (n + pad0 + pad1 - (k - 1) * dilation - 1) // stride + 1


def shifted_taps(x, axes, pads, kernel, strides, dilations):
    """The kh*kw strided windows of a convolution, in (i, j) order: ``x`` zero-padded once on its two spatial
    ``axes`` (``pads`` = ((top, bottom), (left, right))), window (i, j) = the input under kernel tap (i, j) for
    every output position.  Returns ``(taps, ho, wo)``.  Shared by the depthwise, im2col and per-tap-GEMM convs."""
    (ah, aw), ((pt, pb), (pl, pr)) = axes, pads
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    ho = conv_out_size(x.shape[ah], pt, pb, kh, dh, sh)
    wo = conv_out_size(x.shape[aw], pl, pr, kw, dw, sw)
    if pt or pb or pl or pr:
        cfg = [(0, 0)] * x.ndim
        cfg[ah], cfg[aw] = (pt, pb), (pl, pr)
        x = jnp.pad(x, cfg)
    taps = []
    for i in range(kh):
        for j in range(kw):
            start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
            start[ah], limit[ah], step[ah] = i * dh, i * dh + (ho - 1) * sh + 1, sh
            start[aw], limit[aw], step[aw] = j * dw, j * dw + (wo - 1) * sw + 1, sw
            taps.append(lax.slice(x, start, limit, step))
    return taps, ho, wo


def _dw_taps(w):
    """Depthwise filter (C, 1, kh, kw) as a contiguous (kh, kw, C) array, one C-vector per tap.

    Left to itself XLA makes the transpose a layout change ({1,0,2}) and fuses it into the depthwise loop, which
    then gathers every weight with a stride of kh*kw.  Flattening to 1-D behind an optimization barrier forces a
    real (tiny) row-major copy, so the loop loads weights contiguously: 32x14x14x672 5x5, 9.6 -> 4.3 ms.
    """
    _, _, kh, kw = w.shape
    flat = lax.optimization_barrier(jnp.transpose(w[:, 0], (1, 2, 0)).reshape(-1))
    return flat.reshape(kh, kw, -1)


def _pad_products(per_op: bool, strides) -> bool:
    """Depthwise formulation, from static facts only: zero-pad each tap's product (True) or pad the input once.

    Measured on Lite0's 16 depthwise layers at batch 32 (2-core CPU): in an op's own executable, padding the
    input copies it, which costs most for strided layers (the input is 4x the output): padded products there,
    e.g. 32x112x112x96 3x3/2 8.2 vs 14.3 ms; stride-1 layers are faster with the padded input (9 of 12 layers,
    e.g. 32x14x14x672 5x5 4.6 vs 11.9 ms; all layers 75.5 ms vs 121.1 ms with products everywhere).  Inside a
    whole graph the input padding fuses into the producer, and padded input is best for all (Lite0 forward 146
    vs 153 ms with products for the strided layers).
    """
    return per_op and max(strides) > 1


def traced_alone_differs(op: Op, weights: dict) -> bool:
    """Whether ``op`` traces differently in its own executable (:func:`per_op_executable`) than inside a larger one:
    a strided depthwise Conv on the CPU (:func:`_pad_products`).  Such an op also computes different float bits
    when its neighbours share its executable (XLA fuses, and contracts multiply-adds, across the boundary), so the
    Engine's multi-op blocks leave it on its own (:meth:`qsens.engine.Engine.block_plan`)."""
    if _native() or op.onnx_type != "Conv" or op.type != "Conv":
        return False
    w = weights.get("filter")
    strides = op.attr("strides")
    return (w is not None and w.ndim == 4 and w.shape[1] == 1 and op.attr("group") == w.shape[0] and strides is not None
            and _pad_products(True, strides))


def conv2d_nhwc(x, w, b, *, strides, pads, dilations, group):
    """x (N,H,W,C), w (O, C/g, kh, kw) -> (N,Ho,Wo,O)."""
    n, h, wd, c = x.shape
    o, cg, kh, kw = w.shape
    (pt, pl, pb, pr) = pads
    sh, sw = strides
    dh, dw = dilations
    native = _native()
    if not native and group == c == o and cg == 1 and _pad_products(_DW_PRODUCTS.get(), strides):
        # depthwise, strided, op on its own (the Engine's executables; see _pad_products): one shifted product
        # per tap, each zero-padded to the output size, summed in the same tree order as the branch below.
        ho, wo = conv_out_size(h, pt, pb, kh, dh, sh), conv_out_size(wd, pl, pr, kw, dw, sw)
        wt = _dw_taps(w)  # (kh, kw, C)

        def valid(n_in, n_out, stride, off):
            """Output range [lo, hi] whose input index out*stride + off lies inside [0, n_in)."""
            lo = -(off // stride) if off < 0 else 0  # ceil(-off / stride)
            hi = min(n_out - 1, (n_in - 1 - off) // stride)
            return lo, hi

        terms = []
        for i in range(kh):
            for j in range(kw):
                oi, oj = i * dh - pt, j * dw - pl  # input index = out*stride + off
                h0, h1 = valid(h, ho, sh, oi)
                w0, w1 = valid(wd, wo, sw, oj)
                if h0 > h1 or w0 > w1:
                    continue
                patch = lax.slice(x, (0, h0 * sh + oi, w0 * sw + oj, 0),
                                  (n, h1 * sh + oi + 1, w1 * sw + oj + 1, c), (1, sh, sw, 1))
                term = patch * wt[i, j]
                if (h0, h1, w0, w1) != (0, ho - 1, 0, wo - 1):
                    term = jnp.pad(term, ((0, 0), (h0, ho - 1 - h1), (w0, wo - 1 - w1), (0, 0)))
                terms.append(term)
        y = tree_sum(terms) if terms else jnp.zeros((n, ho, wo, c), x.dtype)
    elif not native and group == c == o and cg == 1:
        # depthwise: pad the input once, k*k shifted multiply-adds, tree-summed
        taps, _, _ = shifted_taps(x, (1, 2), ((pt, pb), (pl, pr)), (kh, kw), (sh, sw), (dh, dw))
        wt = _dw_taps(w).reshape(kh * kw, c)
        terms = [t * wt[k] for k, t in enumerate(taps)]
        y = tree_sum(terms)  # same tree as the per-op branch (they differ only in where XLA contracts to FMA)
    elif not native and group == 1 and c <= 4 and (kh, kw) != (1, 1):
        # a first layer on an image (C <= 4): im2col + one dot.  XLA-CPU's convolution with 3 input channels runs
        # far below the dot's rate: Lite0's stem (8x224x224x3 -> 32, 3x3/2) 4.9-5.4 ms native vs 1.8-3.4 ms
        # im2col; for C >= 8 the native convolution wins (8x112x112x8 -> 16: 1.5 vs 2.8 ms), so only here.
        cols, ho, wo = shifted_taps(x, (1, 2), ((pt, pb), (pl, pr)), (kh, kw), (sh, sw), (dh, dw))
        patches = jnp.concatenate(cols, axis=-1).reshape(-1, kh * kw * c)  # (i, j, c) order
        wm = jnp.transpose(w, (2, 3, 1, 0)).reshape(kh * kw * c, o)
        y = jnp.dot(patches, wm, precision=lax.Precision.HIGHEST).reshape(n, ho, wo, o)
    elif not native and kh == kw == 1 and group == 1 and not (pt or pb or pl or pr):
        xs = x[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else x
        y = jnp.dot(xs.reshape(-1, c), w[:, :, 0, 0].T, precision=lax.Precision.HIGHEST)
        y = y.reshape(xs.shape[:3] + (o,))
    else:
        y = lax.conv_general_dilated(
            x, jnp.transpose(w, (2, 3, 1, 0)), window_strides=(sh, sw), padding=((pt, pb), (pl, pr)),
            rhs_dilation=(dh, dw), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=group,
            precision=lax.Precision.HIGHEST,
        )
    if b is not None:
        y = y + b
    return y


def run_nhwc(op: Op, ins: list, weights: dict, consts: dict) -> list:
    """Run ``op`` on NHWC activations; returns NHWC outputs (fused ReLU applied by the caller)."""
    from . import registry

    t = op.onnx_type
    a = dict(op.attrs)
    if t == "Conv":
        return [conv2d_nhwc(ins[0], weights["filter"], weights.get("bias"), strides=a["strides"], pads=a["pads"],
                            dilations=a["dilations"], group=a["group"])]
    if t in ("MaxPool", "AveragePool"):
        x = ins[0]
        k, s = a["kernel_shape"], a["strides"]
        pt, pl, pb, pr = a["canonical_pads"]
        win = ((1,) + tuple(k) + (1,), (1,) + tuple(s) + (1,), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        if t == "MaxPool":
            init = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
            # a concrete (NumPy) init value: JAX then lowers the max monoid (reduce_window_max), which has
            # reverse-mode derivatives (the straight-through gradient model differentiates through it)
            return [lax.reduce_window(x, np.asarray(init, x.dtype), lax.max, *win)]
        z = jnp.zeros((), x.dtype)
        from .ops.conv import conv_pads
        from .ops.pool import exact_divide, window_sum_rowmajor

        total = window_sum_rowmajor(x, tuple(k), tuple(s), ((pt, pb), (pl, pr)), (1, 1), (1, 2))

        orig = conv_pads(a, x.shape[1:3], k, s, (1, 1))
        hw = x.shape[1:3]
        if a.get("count_include_pad", 0):
            # explicit pads count, the ceil_mode extension does not
            ones = jnp.ones((hw[0] + orig[0][0] + orig[0][1], hw[1] + orig[1][0] + orig[1][1]), x.dtype)
            pads2 = ((0, pb - orig[0][1]), (0, pr - orig[1][1]))
        else:
            ones = jnp.ones(hw, x.dtype)
            pads2 = ((pt, pb), (pl, pr))
        cnt = lax.reduce_window(ones, z, lax.add, tuple(k), tuple(s), pads2)
        return [exact_divide(total, cnt[None, :, :, None])]
    if t in ("GlobalAveragePool", "ReduceMean"):
        return [ins[0].mean(axis=(1, 2), keepdims=True)]
    if t == "GlobalMaxPool":
        return [ins[0].max(axis=(1, 2), keepdims=True)]
    if t == "BatchNormalization":
        sc, bi, mu, var = (weights.get(r, consts.get(r)) for r in ("scale", "bias", "mean", "var"))
        inv = sc / jnp.sqrt(var + a.get("epsilon", 1e-5))
        return [(ins[0] - mu) * inv + bi]
    if t == "Concat":  # constant inputs too (4-D: permuted like the activations)
        from .convert import onnx_inputs

        axis = a["axis"] % 4
        return [jnp.concatenate(onnx_inputs(op, weights, ins, lambda v: _perm_const(v, True)), axis=TO_NHWC.index(axis))]
    # element-wise: same ONNX implementation, operands permuted (Clip bounds are scalars: left alone)
    from .convert import onnx_inputs

    perm = (lambda v: v) if t == "Clip" else (lambda v: _perm_const(v, True))
    return list(registry.OPS[t].impl(jnp, onnx_inputs(op, weights, ins, perm), a))
