"""Hypothesis property tests: every kernel vs the independent oracle, bit-exact; corner cases are counted."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quant_oracle as O
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qsens.quant.kernels as K
from qsens.errors import QsensError
from qsens.onnx.ir import Op, freeze_attrs
from qsens.quant import int8_op, qparams_for, quantize

SET = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

QP = jax.jit(qparams_for, static_argnums=(0, 4, 5))
RUN = jax.jit(int8_op, static_argnums=(0,))

# thresholds: nice values (exact ratios -> ties, equal thresholds -> passthrough) and arbitrary float32 values
nice_th = st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 127.0, 255.0, 3.0])
any_th = st.floats(0.0625, 40.0, width=32)
ths = st.one_of(nice_th, any_th)
dyadic = st.integers(-64, 64).map(lambda k: k / 32.0)
fine = st.integers(-1024, 1024).map(lambda k: k / 1024.0)  # with th_in == th_out: W*2^6 has .5 ties
fvals = st.one_of(dyadic, st.floats(-3, 3, width=32))


def mkop(t, n=1, w=(), **a):
    return Op("y", t, tuple(f"x{i}" for i in range(n)), ("y",), tuple((r, r) for r in w), freeze_attrs(a))


def arr(draw, shape, elems):
    return np.array(draw(st.lists(elems, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))).reshape(shape)


def codes(draw, shape, signed):
    lo, hi = (-128, 127) if signed else (0, 255)
    return arr(draw, shape, st.integers(lo, hi)).astype(np.int32)


def f32t(t):
    return jnp.float32(t)


CONV_CFG = [
    dict(shape=(1, 3, 5, 5), O=4, k=(3, 3), s=(1, 1), p=(1, 1, 1, 1), d=(1, 1), g=1),
    dict(shape=(1, 4, 4, 4), O=4, k=(3, 3), s=(2, 2), p=(0, 1, 1, 0), d=(1, 1), g=2),
    dict(shape=(1, 2, 5, 5), O=2, k=(2, 2), s=(1, 1), p=(0, 0, 0, 0), d=(2, 2), g=1),
    dict(shape=(1, 3, 3, 3), O=2, k=(1, 1), s=(1, 1), p=(0, 0, 0, 0), d=(1, 1), g=1),
]


def test_conv_matches_oracle():
    cnt = Counter()

    @SET
    @given(st.data())
    def run(data):
        cfg = data.draw(st.sampled_from(CONV_CFG))
        sin, sout, relu = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
        wscale = data.draw(st.sampled_from([1.0, 1.0, 50.0, 1e-3]))  # large -> r<0 fallback
        wel = data.draw(st.sampled_from([fvals, fine]))
        W = (arr(data.draw, (cfg["O"], cfg["shape"][1] // cfg["g"]) + cfg["k"], wel) * wscale).astype(np.float32)
        has_b = data.draw(st.booleans())
        bmul = data.draw(st.sampled_from([1.0, 100.0, 3000.0]))  # big biases -> back-off
        b = (arr(data.draw, (cfg["O"],), fvals) * bmul).astype(np.float32) if has_b else None
        th_in = data.draw(ths)
        th_out = th_in if data.draw(st.booleans()) else data.draw(ths)
        q = codes(data.draw, cfg["shape"], sin)
        op = mkop("Conv", 1, ("filter", "bias") if has_b else ("filter",), kernel_shape=cfg["k"], strides=cfg["s"],
                  pads=cfg["p"], dilations=cfg["d"], group=cfg["g"], do_relu=relu, relu_limit=-1.0)
        w = {"filter": W} | ({"bias": b} if has_b else {})
        qp = QP(op, w, (f32t(th_in),), f32t(th_out), sin, sout)
        exp, info = O.conv(q, W, b, float(np.float32(th_in)), float(np.float32(th_out)), sin, sout, cfg["s"],
                           cfg["p"], cfg["d"], cfg["g"], relu)
        assert bool(qp["fallback"]) == info["fallback"]
        cnt["fallback"] += info["fallback"]
        if info["fallback"]:
            return
        assert int(qp["r"]) == info["r"] and np.array_equal(np.asarray(qp["w8"]), info["w8"])
        if has_b:
            assert np.asarray(qp["b16"]).tolist() == info["b16"]
        got = np.asarray(RUN(op, None, [jnp.asarray(q)], qp))
        assert got.tolist() == exp.tolist()
        cnt["saturated"] += info["saturated"] > 0
        cnt["backoff"] += info["backoff"]
        cnt["weight_tie"] += info["ties"] > 0
        cnt["rsr_tie"] += info["rsr_ties"] > 0
        cnt["uint8_out"] += not sout

    run()
    # the r < 0 F32 fallback is hit by some draws only (which draws a worker process makes varies with what ran before
    # it under xdist, even derandomized: seen with -n 2); test_conv_fallback_matches_oracle covers it deterministically
    for k in ("saturated", "backoff", "weight_tie", "rsr_tie", "uint8_out"):
        assert cnt[k] > 0, (k, cnt)


@pytest.mark.parametrize("wmax, fallback", [(150.0, True), (100.0, False)])
def test_conv_fallback_matches_oracle(wmax, fallback):
    """BM1684's Conv F32 fallback (``rshift < 0``: max|W| * s_in / s_out above what an int8 weight holds) decided as the
    oracle decides it, deterministically (thresholds equal: 150 needs r = -1, 100 fits with r = 0)."""
    cfg = CONV_CFG[0]
    W = np.full((cfg["O"], cfg["shape"][1]) + cfg["k"], wmax, np.float32)
    W[0, 0, 0, 0] = -wmax
    op = mkop("Conv", 1, ("filter",), kernel_shape=cfg["k"], strides=cfg["s"], pads=cfg["p"], dilations=cfg["d"],
              group=cfg["g"], do_relu=False, relu_limit=-1.0)
    qp = QP(op, {"filter": W}, (f32t(4.0),), f32t(4.0), True, True)
    q = np.zeros(cfg["shape"], np.int32)
    _, info = O.conv(q, W, None, 4.0, 4.0, True, True, cfg["s"], cfg["p"], cfg["d"], cfg["g"], False)
    assert bool(qp["fallback"]) == info["fallback"] == fallback


def test_matmul_matches_oracle():
    cnt = Counter()

    @SET
    @given(st.data())
    def run(data):
        Kd, N = data.draw(st.sampled_from([(4, 3), (7, 2)]))
        sin, sout, relu = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
        W = (arr(data.draw, (Kd, N), fvals) * data.draw(st.sampled_from([1.0, 50.0]))).astype(np.float32)
        b = (arr(data.draw, (N,), fvals) * data.draw(st.sampled_from([1.0, 3000.0]))).astype(np.float32)
        th_in, th_out = data.draw(ths), data.draw(ths)
        q = codes(data.draw, (2, Kd), sin)
        transB = data.draw(st.booleans())
        op = mkop("MatMul", 1, ("filter", "bias"), do_relu=relu, transB=transB)
        qp = QP(op, {"filter": W.T if transB else W, "bias": b}, (f32t(th_in),), f32t(th_out), sin, sout)
        exp, info = O.matmul(q, W, b, float(np.float32(th_in)), float(np.float32(th_out)), sin, sout, relu)
        assert not bool(qp["fallback"])
        got = np.asarray(RUN(op, None, [jnp.asarray(q)], qp))
        assert got.tolist() == exp.tolist()
        cnt["saturated"] += info["saturated"] > 0
        cnt["clamped_r"] += info["r0"] < 0
        cnt["backoff"] += info["backoff"]

    run()
    assert cnt["saturated"] > 0 and cnt["clamped_r"] > 0 and cnt["backoff"] > 0, cnt


def test_add_mul_concat_match_oracle():
    cnt = Counter()

    @SET
    @given(st.data())
    def run(data):
        sg = (data.draw(st.booleans()), data.draw(st.booleans()))
        sout = data.draw(st.booleans())
        t = (data.draw(ths), data.draw(ths))
        to = data.draw(ths)
        tf = [float(np.float32(v)) for v in t]
        tof = float(np.float32(to))
        q0 = codes(data.draw, (1, 2, 2, 3), sg[0])
        q1 = codes(data.draw, (1, 2, 1, 3) if data.draw(st.booleans()) else (1, 2, 2, 3), sg[1])
        tt = (f32t(t[0]), f32t(t[1]))
        coeff = data.draw(st.sampled_from([None, (1.0, -1.0), (0.5, 2.0)]))
        relu = data.draw(st.booleans())
        op = mkop("Add", 2, do_relu=relu, **({"coeff": coeff} if coeff else {}))
        qp = QP(op, {}, tt, f32t(to), sg, sout)
        exp, info = O.add([q0, q1], tf, tof, list(sg), sout, list(coeff) if coeff else None, relu)
        assert bool(qp["fallback"]) == info["fallback"]
        cnt["add_fallback"] += info["fallback"]
        if not info["fallback"]:
            assert np.asarray(RUN(op, None, [q0, q1], qp)).tolist() == exp.tolist()
            cnt["add_sat"] += info["saturated"] > 0
            cnt["add_tie"] += info["rsr_ties"] > 0
        op = mkop("Mul", 2)
        qp = QP(op, {}, tt, f32t(to), sg, sout)
        exp, info = O.mul(q0, q1, tf[0], tf[1], tof, sg[0], sg[1], sout)
        assert bool(qp["fallback"]) == info["fallback"]
        assert (int(qp["m"]), int(qp["r"])) == (info["m"], info["r"])
        if not info["fallback"]:
            assert np.asarray(RUN(op, None, [q0, q1], qp)).tolist() == exp.tolist()
            cnt["mul_sat"] += info["saturated"] > 0
        q1c = codes(data.draw, (1, 1, 2, 3), sg[1])
        op = mkop("Concat", 2, axis=1)
        qp = QP(op, {}, tt, f32t(to), sg, sout)
        exp, info = O.concat([q0, q1c], tf, tof, list(sg), sout)
        assert np.asarray(RUN(op, None, [q0, q1c], qp)).tolist() == exp.tolist()
        cnt["concat_pass"] += info["passthrough"] > 0
        cnt["concat_sat"] += info["saturated"] > 0

    run()
    for k in ("add_fallback", "add_sat", "add_tie", "mul_sat", "concat_pass", "concat_sat"):
        assert cnt[k] > 0, (k, cnt)


def test_scale_matches_oracle():
    cnt = Counter()

    @SET
    @given(st.data())
    def run(data):
        sin, sout, relu = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
        a = (arr(data.draw, (3,), fvals.filter(lambda v: v != 0)) * data.draw(st.sampled_from([1.0, 200.0]))).astype(np.float32)
        b = (arr(data.draw, (3,), fvals) * data.draw(st.sampled_from([1.0, 100.0, 5000.0]))).astype(np.float32)
        th_in, th_out = data.draw(ths), data.draw(ths)
        q = codes(data.draw, (1, 3, 2, 2), sin)
        op = mkop("Scale", 1, ("scale", "bias"), do_relu=relu)
        qp = QP(op, {"scale": a, "bias": b}, (f32t(th_in),), f32t(th_out), sin, sout)
        exp, info = O.scale_op(q, a, b, float(np.float32(th_in)), float(np.float32(th_out)), sin, sout, relu)
        assert np.asarray(qp["r"]).tolist() == info["r"] and np.asarray(qp["a8"]).tolist() == info["a8"]
        assert np.asarray(qp["b16"]).tolist() == info["b16"]
        assert np.asarray(RUN(op, None, [jnp.asarray(q)], qp)).tolist() == exp.tolist()
        cnt["sat"] += info["saturated"] > 0
        cnt["backoff"] += info["backoff"] > 0
        cnt["neg_r"] += info["negative_r"] > 0

    run()
    assert cnt["sat"] > 0 and cnt["backoff"] > 0 and cnt["neg_r"] > 0, cnt


def test_pool_leaky_lut_quantize_match_oracle():
    cnt = Counter()

    @SET
    @given(st.data())
    def run(data):
        signed = data.draw(st.booleans())
        q = codes(data.draw, (1, 2, 5, 5), signed)
        k = data.draw(st.sampled_from([(2, 2), (3, 3), (3, 2)]))
        s = data.draw(st.sampled_from([(1, 1), (2, 2)]))
        p = data.draw(st.sampled_from([(0, 0, 0, 0), (1, 1, 1, 1), (1, 0, 0, 1)]))
        cip = data.draw(st.booleans())
        th = data.draw(ths)
        op = mkop("AvgPool", kernel_shape=k, strides=s, pads=p, count_include_pad=cip)
        qp = QP(op, {}, (f32t(th),), f32t(th), signed, signed)
        exp = O.avgpool(q, k, s, p, cip, signed)
        assert np.asarray(RUN(op, None, [jnp.asarray(q)], qp)).tolist() == exp.tolist()
        cnt["avg_partial_window"] += (not cip) and p != (0, 0, 0, 0)
        op = mkop("MaxPool", kernel_shape=k, strides=s, pads=p)
        assert np.asarray(RUN(op, None, [jnp.asarray(q)], qp)).tolist() == O.maxpool(q, k, s, p).tolist()
        alpha = data.draw(st.sampled_from([0.1, 0.01, 0.2, 0.125, 1 / 3, 0.3, 0.05]))
        op = mkop("LeakyRelu", alpha=alpha)
        qp = QP(op, {}, (f32t(th),), f32t(th), signed, signed)
        assert np.asarray(RUN(op, None, [jnp.asarray(q)], qp)).tolist() == O.leaky(q, alpha, signed)[0].tolist()
        fn_name = data.draw(st.sampled_from(["Sigmoid", "Tanh", "SiLU"]))
        import math

        fn = {"Sigmoid": O.sigmoid, "Tanh": math.tanh, "SiLU": lambda x: x * O.sigmoid(x)}[fn_name]
        sout = fn_name == "Tanh" or fn_name == "SiLU" or data.draw(st.booleans())
        to = 1.0 if fn_name == "Sigmoid" else data.draw(ths)
        op = mkop(fn_name)
        qp = QP(op, {}, (f32t(th),), f32t(to), signed, sout)
        tab = O.lut(fn, float(np.float32(th)), float(np.float32(to)), signed, sout)
        lo = -128 if signed else 0
        assert np.asarray(qp["lut"]).tolist() == [tab[c] for c in range(lo, lo + 256)]
        x = arr(data.draw, (16,), st.one_of(st.floats(-50, 50, width=32), dyadic)).astype(np.float32)
        got = np.asarray(jax.jit(quantize, static_argnums=2)(jnp.asarray(x), f32t(th), signed)).tolist()
        exp = [O.quantize(float(v), float(np.float32(th)), signed) for v in x]
        assert got == exp
        prods = [O.f32(O.Fr(float(v)) * O.f32(O.f64(1 / O.s_of(float(np.float32(th)), signed)))) for v in x]
        cnt["cast_tie"] += any(O.is_half(v) for v in prods)
        cnt["cast_sat"] += any(e in (-128, 127, 255) for e in exp)

    run()
    assert cnt["avg_partial_window"] > 0 and cnt["cast_tie"] > 0 and cnt["cast_sat"] > 0, cnt


def test_no_retrace_when_thresholds_change():
    traces = Counter()
    op = mkop("Conv", 1, ("filter", "bias"), kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
              dilations=(1, 1), group=1, do_relu=True, relu_limit=-1.0)
    rng = np.random.default_rng(0)
    w = {"filter": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)}

    @jax.jit
    def f(th_in, th_out, x):
        traces["n"] += 1
        qp = qparams_for(op, w, (th_in,), th_out, True, False)
        return jnp.where(qp["fallback"], -1, int8_op(op, None, [quantize(x, th_in, True)], qp))

    x = jnp.asarray(rng.normal(size=(1, 3, 6, 6)).astype(np.float32))
    outs = []
    for ti, to in [(1.0, 2.0), (2.5, 0.7), (4.0, 9.0), (0.01, 30.0)]:
        outs.append(f(jnp.float32(ti), jnp.float32(to), x))
        eager = int8_op(op, None, [quantize(x, ti, True)], qparams_for(op, w, (ti,), to, True, False))
        assert np.array_equal(np.asarray(outs[-1]), np.asarray(eager)) or bool(
            qparams_for(op, w, (ti,), to, True, False)["fallback"])
    assert traces["n"] == 1
    # also under vmap over thresholds
    v = jax.jit(jax.vmap(lambda ti: qparams_for(op, w, (ti,), jnp.float32(2.0), True, True)["r"]))
    assert v(jnp.array([1.0, 2.0, 4.0], jnp.float32)).tolist() == [
        int(qparams_for(op, w, (t,), 2.0, True, True)["r"]) for t in (1.0, 2.0, 4.0)]


def test_accumulation_paths_agree(monkeypatch):
    rng = np.random.default_rng(1)
    op = mkop("Conv", 1, ("filter",), kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
              group=1)
    w = {"filter": rng.normal(size=(3, 80, 3, 3)).astype(np.float32)}  # K = 720 > 514 -> split path in auto
    qp = qparams_for(op, w, (1.0,), 40.0, False, True)
    x = jnp.asarray(rng.integers(0, 256, (1, 80, 4, 4)), jnp.int32)
    res = {}
    cpu = jax.default_backend() == "cpu"  # int32 convolutions exist on CPU only (cuDNN: UNIMPLEMENTED)
    for mode in ("auto", "f32", "split", "split4") + (("int32",) if cpu else ()):
        monkeypatch.setattr(K, "ACCUMULATE", mode)
        res[mode] = np.asarray(int8_op(op, None, [x], qp))
    ref = res["int32" if cpu else "split4"]
    assert np.array_equal(res["auto"], ref) and np.array_equal(res["split"], ref) and np.array_equal(res["split4"], ref)
    monkeypatch.setattr(K, "ACCUMULATE", "auto")
    assert K._acc_mode(514) == "f32" and K._acc_mode(515) == "split" and K._acc_mode(8192, "cpu") == "int32"
    # GPU/TPU: no int32 convolution in cuDNN -> four float32 nibble products, exact up to K = 65793
    assert K._acc_mode(8192, "gpu") == "split4" and K._acc_mode(65793, "gpu") == "split4"
    with pytest.raises(QsensError, match="K=65794"):
        K._acc_mode(65794, "gpu")


def test_split4_accumulation_is_exact_where_float32_alone_is_not():
    # worst-case codes: K*255*128 = 3.3e8 >> 2^24, so a single float32 dot would round; split4 must not
    rng = np.random.default_rng(7)
    k = 10000
    x = np.where(rng.random((3, k)) < 0.5, 255, 253).astype(np.int64)
    w = np.where(rng.random((k, 5)) < 0.5, -128, -127).astype(np.int64)  # one sign: no cancellation, |sum| ~ 3e8
    exact = x @ w

    def dot(a, b, dt):
        return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                                   preferred_element_type=dt)

    xi, wi = jnp.asarray(x, jnp.int32), jnp.asarray(w, jnp.int32)
    got = np.asarray(_with_mode("split4", lambda: K._exact(dot, xi, wi, k)))
    assert got.tolist() == exact.tolist()
    f32 = np.asarray(dot(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), jnp.float32)).astype(np.int64)
    assert not np.array_equal(f32, exact)  # the case really needs the split


def _with_mode(mode, fn):
    old = K.ACCUMULATE
    K.ACCUMULATE = mode
    try:
        return fn()
    finally:
        K.ACCUMULATE = old


@pytest.mark.parametrize("c,o,g,k,s,p,d", [
    (8, 6, 1, 3, 1, (1, 1, 1, 1), (1, 1)),
    (8, 8, 8, 5, 2, (1, 2, 2, 1), (1, 1)),
    (12, 6, 3, 3, 2, (0, 0, 1, 1), (2, 2)),
    (80, 3, 1, 3, 1, (1, 1, 1, 1), (1, 1)),
])
def test_conv_as_dots_is_exact_on_integer_codes(c, o, g, k, s, p, d):
    # the off-CPU exact conv (no cuDNN: its Winograd/FFT algorithms round) against an int64 NumPy reference
    rng = np.random.default_rng(c * 7 + k)
    x = rng.integers(0, 256, (2, c, 9, 11)).astype(np.int64)
    w = rng.integers(-128, 128, (o, c // g, k, k)).astype(np.int64)
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    ho = (9 + p[0] + p[2] - (k - 1) * d[0] - 1) // s + 1
    wo = (11 + p[1] + p[3] - (k - 1) * d[1] - 1) // s + 1
    ref = np.zeros((2, o, ho, wo), np.int64)
    cg, og = c // g, o // g
    for i in range(k):
        for j in range(k):
            xs = xp[:, :, i * d[0]: i * d[0] + (ho - 1) * s + 1: s, j * d[1]: j * d[1] + (wo - 1) * s + 1: s]
            for gi in range(g):
                ref[:, gi * og:(gi + 1) * og] += np.einsum("nchw,oc->nohw", xs[:, gi * cg:(gi + 1) * cg],
                                                           w[gi * og:(gi + 1) * og, :, i, j])
    got = K._conv_as_dots(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), (s, s), p, d, g)
    assert np.asarray(got).astype(np.int64).tolist() == ref.tolist()
