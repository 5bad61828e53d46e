"""The INT8 kernels' fast paths give the same integers as their plain forms: a Conv on channel-last codes (the
search's executables), and one float32 contraction where a layer's own weights keep every partial sum below 2^24."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qsens.quant.kernels as K
from qsens.onnx.ir import Op, freeze_attrs
from qsens.onnx.layout import TO_NCHW, TO_NHWC
from qsens.quant import BM1684, BM1684X, int8_op, qparams_for


def conv_op(c, o, g, k, s, p, d=(1, 1), relu=False):
    return Op("y", "Conv", ("x0",), ("y",), (("filter", "filter"), ("bias", "bias")),
              freeze_attrs(dict(kernel_shape=(k, k), strides=(s, s), pads=p, dilations=d, group=g, do_relu=relu)))


CONVS = [  # (C, O, group, k, stride, pads, dilations): depthwise strided / unstrided, grouped, 1x1, dilated, K > 514
    (16, 16, 16, 3, 2, (1, 1, 1, 1), (1, 1)),
    (16, 16, 16, 5, 1, (2, 2, 2, 2), (1, 1)),
    (12, 6, 3, 3, 2, (0, 0, 1, 1), (2, 2)),
    (24, 8, 1, 1, 1, (0, 0, 0, 0), (1, 1)),
    (80, 4, 1, 3, 1, (1, 1, 1, 1), (1, 1)),
]


@pytest.mark.parametrize("chip", [BM1684, BM1684X], ids=["bm1684", "bm1684x"])
@pytest.mark.parametrize("cfg", CONVS, ids=[f"c{c[0]}o{c[1]}g{c[2]}k{c[3]}s{c[4]}" for c in CONVS])
@pytest.mark.parametrize("signed_in", [False, True])
def test_conv_on_nhwc_codes_equals_nchw(chip, cfg, signed_in):
    c, o, g, k, s, p, d = cfg
    rng = np.random.default_rng(c * 31 + k + s)
    op = conv_op(c, o, g, k, s, p, d, relu=not signed_in)
    w = {"filter": rng.normal(size=(o, c // g, k, k)).astype(np.float32),
         "bias": rng.normal(size=(o,)).astype(np.float32)}
    qp = qparams_for(op, w, (3.0,), 5.0, signed_in, not signed_in, chip)
    lo, hi = (-128, 127) if signed_in else (0, 255)
    x = jnp.asarray(rng.integers(lo, hi + 1, (2, c, 9, 11)), jnp.int32)
    ref = np.asarray(int8_op(op, None, [x], qp, chip))
    got = int8_op(op, None, [jnp.transpose(x, TO_NHWC)], qp, chip, nhwc=True)
    assert np.asarray(jnp.transpose(got, TO_NCHW)).tolist() == ref.tolist()
    # the search hands a Conv its weights as float32 (the same integers): the same codes again
    qpf = {**qp, "w8": np.asarray(qp["w8"], np.float32)}
    got_f = int8_op(op, None, [jnp.transpose(x, TO_NHWC)], qpf, chip, nhwc=True)
    assert np.asarray(jnp.transpose(got_f, TO_NCHW)).tolist() == ref.tolist()
    assert np.asarray(int8_op(op, None, [x], qpf, chip)).tolist() == ref.tolist()


def test_only_a_conv_takes_nhwc_codes():
    op = Op("y", "Add", ("a", "b"), ("y",), (), freeze_attrs({}))
    with pytest.raises(ValueError, match="only a Conv runs on NHWC codes, not a Add"):
        int8_op(op, None, [jnp.zeros((1, 2, 2, 3), jnp.int32)] * 2, {}, nhwc=True)


def test_float32_fits_exactly_up_to_the_bound():
    # sum |w| = 65793 -> 255 * 65793 = 2^24 - 1: every partial sum is exact; one more and it is not guaranteed
    w = np.zeros((600, 3), np.int32)
    w[:514, 0] = 128
    w[514, 0] = 65793 - 514 * 128  # 1: column 0 sums to 65793
    w[:, 1] = -100  # 60000
    assert bool(K.fits_float32(jnp.asarray(w), (0,)))
    w[515, 0] = 1
    assert not bool(K.fits_float32(jnp.asarray(w), (0,)))
    # per output channel of an OIHW filter: the largest channel decides
    f = np.zeros((2, 600, 1, 1), np.int32)
    f[0, :, 0, 0] = 127  # 76200: does not fit
    f[1, :, 0, 0] = 1
    assert not bool(K.fits_float32(jnp.asarray(f), (1, 2, 3)))
    f[0, :, 0, 0] = 109  # 65400
    assert bool(K.fits_float32(jnp.asarray(f), (1, 2, 3)))


def _dot(a, b, dt):
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                               preferred_element_type=dt)


@pytest.mark.parametrize("k", [700, 10000])  # static modes: split (K <= 8191), int32 on CPU / split4 elsewhere
def test_weight_bound_keeps_the_contraction_exact(k):
    rng = np.random.default_rng(k)
    x = np.where(rng.random((3, k)) < 0.5, 255, 253).astype(np.int64)
    # (a) weights whose sums fit (|w| <= 3): the run-time float32 path; (b) worst-case weights that do not fit
    # (one sign, |w| ~ 128): a single float32 dot rounds, so the result is exact only if the exact path ran
    small = rng.integers(-3, 4, (k, 4)).astype(np.int64)
    big = np.where(rng.random((k, 4)) < 0.5, -128, -127).astype(np.int64)
    for w in (small, big):
        exact = x @ w
        got = jax.jit(lambda a, b: K._exact(_dot, a, b, k, "t", (0,)))(jnp.asarray(x, jnp.int32),
                                                                        jnp.asarray(w, np.float32))
        assert np.asarray(got).astype(np.int64).tolist() == exact.tolist()
    f32 = np.asarray(_dot(jnp.asarray(x, jnp.float32), jnp.asarray(big, jnp.float32), jnp.float32))
    assert not np.array_equal(f32.astype(np.int64), x @ big)  # (b) really needs the exact path
    assert int(np.abs(small).sum(0).max()) <= K._F32_FIT < int(np.abs(big).sum(0).max())
