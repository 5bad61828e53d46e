"""§8 test vectors and §3.10 worked examples, against both qsens.quant and the oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quant_oracle as O

from qsens.onnx.ir import Op, freeze_attrs
from qsens.quant import (
    Round,
    avgpool_multiplier_shift,
    cal_right_shift_num,
    cal_right_shift_num_use_cblas,
    get_scale_and_shift,
    get_scale_and_shift_positive,
    int8_op,
    qparams_for,
    quantize,
    round_to_int,
    round_to_int_np,
    rshift_round,
    rshift_round_np,
    to_int8,
)


def mkop(type_, n_in=1, weights=(), **attrs):
    return Op(
        name="y", type=type_, inputs=tuple(f"x{i}" for i in range(n_in)), outputs=("y",),
        weights=tuple((r, r) for r in weights), attrs=freeze_attrs(attrs),
    )


def test_tv_r1_to_int8():
    x = jnp.array([2.5, -2.5, 127.6, -128.5, 0.49999], jnp.float32)
    assert to_int8(x).tolist() == [3, -3, 127, -128, 0]
    assert [O.sat(O.rhaz(float(v)), -128, 127) for v in np.asarray(x)] == [3, -3, 127, -128, 0]


def test_tv_r2_rsr():
    v = jnp.array([5, -5, 3, -3], jnp.int32)
    assert rshift_round(v, 1, Round.HALF_UP).tolist() == [3, -2, 2, -1]
    assert rshift_round(v[:2], 1, Round.DOWN).tolist() == [2, -3]
    assert rshift_round(v[:2], 1, Round.HALF_AWAY_FROM_ZERO).tolist() == [3, -3]
    assert rshift_round_np(np.array([5, -5]), 1, Round.HALF_AWAY_FROM_ZERO).tolist() == [3, -3]
    assert [O.rsr(int(a), 1) for a in v] == [3, -2, 2, -1]


def test_rsr_truth_table_all_modes():
    vals = np.arange(-300, 301)
    for r in [-2, 0, 1, 2, 3, 7, 31]:
        for mode, om in [(Round.HALF_UP, "HALF_UP"), (Round.DOWN, "DOWN"), (Round.HALF_AWAY_FROM_ZERO, "HALF_AWAY"),
                         (Round.HALF_TO_EVEN, "HALF_EVEN"), (Round.UP, "UP"), (Round.TOWARDS_ZERO, "TOWARDS_ZERO")]:
            got = rshift_round(jnp.asarray(vals, jnp.int32), r, mode).tolist()
            got64 = rshift_round_np(vals, r, mode).tolist()
            exp = [O.rsr(int(v), r, om) for v in vals]
            assert got == exp == got64, (r, mode)
    # r as an array, int32 extremes at r = 31
    big = jnp.array([2**30, -(2**30), 2**31 - 1, -(2**31)], jnp.int32)
    assert rshift_round(big, 31).tolist() == [O.rsr(int(v), 31) for v in np.asarray(big)]
    assert rshift_round(jnp.array([5, 5, 5]), jnp.array([0, 1, 2])).tolist() == [5, 3, 1]


def test_round_modes_truth_table():
    x = np.array([-2.5, -1.5, -0.5, -0.4, 0.4, 0.5, 1.5, 2.5, 0.49999997], np.float32)
    table = {
        Round.HALF_AWAY_FROM_ZERO: [-3, -2, -1, 0, 0, 1, 2, 3, 0],
        Round.HALF_UP: [-2, -1, 0, 0, 0, 1, 2, 3, 0],
        Round.HALF_TO_EVEN: [-2, -2, 0, 0, 0, 0, 2, 2, 0],
        Round.HALF_DOWN: [-3, -2, -1, 0, 0, 0, 1, 2, 0],
        Round.DOWN: [-3, -2, -1, -1, 0, 0, 1, 2, 0],
        Round.UP: [-2, -1, 0, 0, 1, 1, 2, 3, 1],
        Round.TOWARDS_ZERO: [-2, -1, 0, 0, 0, 0, 1, 2, 0],
    }
    for mode, exp in table.items():
        assert round_to_int(jnp.asarray(x), mode).astype(int).tolist() == exp, mode
        assert jax.jit(lambda v, m=mode: round_to_int(v, m))(jnp.asarray(x)).astype(int).tolist() == exp
        assert round_to_int_np(x, mode).astype(int).tolist() == exp


def test_tv_r4_input_cast_and_ties_under_jit():
    x = jnp.array([1.0, -0.7, 0.0157, 0.01575, 5.0], jnp.float32)
    assert quantize(x, 4.0, True).tolist() == [32, -22, 0, 1, 127]
    qj = jax.jit(quantize, static_argnums=2)
    assert qj(x, jnp.float32(4.0), True).tolist() == [32, -22, 0, 1, 127]
    # exact ties: th = 127 -> s = 1 (signed), th = 255 -> s = 1 (unsigned)
    t = jnp.array([2.5, -2.5, 0.5, -0.5, 126.5, -127.5, 3.5], jnp.float32)
    exp = [3, -3, 1, -1, 127, -128, 4]
    assert quantize(t, 127.0, True).tolist() == exp
    assert qj(t, jnp.float32(127.0), True).tolist() == exp
    assert qj(jnp.abs(t), jnp.float32(255.0), False).tolist() == [3, 3, 1, 1, 127, 128, 4]
    assert [O.quantize(float(v), 127.0, True) for v in np.asarray(t)] == exp
    # ties with a non-trivial scale: th = 2 -> 1/s = 63.5 ; x = 1/127 -> 0.5 after float32 product?
    xs = np.float32(np.arange(-40, 41) / np.float32(8.0))
    for th in [2.0, 0.25, 63.5, 127.0 / 3]:
        assert qj(jnp.asarray(xs), jnp.float32(th), True).tolist() == [O.quantize(float(v), th, True) for v in xs]


def test_tv_s1_s2():
    assert int(cal_right_shift_num(0.5, 4 / 127, 8 / 127)) == 8 == O.cal_rshift(0.5, O.s_of(4, True), O.s_of(8, True))
    assert int(cal_right_shift_num(1.0, 1 / 127, 1 / 127)) == 6
    assert int(cal_right_shift_num(200, 1 / 127, 1 / 127)) == -1
    assert int(cal_right_shift_num(0.001, 1 / 127, 1 / 127)) == 16
    cases = [((1, 2 / 127, 8 / 127), 8), ((1, 6 / 127, 8 / 127), 7), ((0.5, 4 / 127, 2 / 127), 6),
             ((1, 1 / 127, 1 / 127), 6), ((1, 4 / 255, 4 / 127), 7)]
    for args, exp in cases:
        assert int(cal_right_shift_num_use_cblas(*args)) == exp
        assert O.cblas(args[0], O.f64(args[1]), O.f64(args[2])) == exp


def test_tv_s3():
    for x, exp in [(0.5, (1, 1)), (2 / 3, (85, 7)), (1.0, (1, 0)), (2.0, (2, 0)), (0.3, (77, 8)), (1.7, (109, 6))]:
        assert tuple(int(v) for v in get_scale_and_shift_positive(x)) == exp
        assert O.scale_shift(x, True) == exp
    for x, exp in [(0.1, (51, 9)), (0.01, (41, 12)), (0.2, (51, 8)), (0.125, (1, 3)), (1 / 3, (85, 8))]:
        assert tuple(int(v) for v in get_scale_and_shift(x)) == exp
        assert O.scale_shift(x, False) == exp
    # vectorised + jit
    m, r = jax.jit(get_scale_and_shift)(jnp.array([0.1, 0.01, 0.2, 0.125]))
    assert m.tolist() == [51, 41, 51, 1] and r.tolist() == [9, 12, 8, 3]


def test_tv_s4_avgpool_table_all_k():
    listed = {1: (1, 0), 2: (1, 1), 3: (171, 9), 4: (1, 2), 5: (205, 10), 7: (73, 9), 9: (57, 9), 16: (1, 4),
              25: (41, 10), 49: (167, 13), 100: (41, 12), 196: (167, 15), 225: (73, 14)}
    for k in range(1, 226):
        got = avgpool_multiplier_shift(k)
        assert got == O.avgpool_table(k)
        if k in listed:
            assert got == listed[k]
        m, e = got
        assert m % 2 == 1 or e == 0
        assert abs(m / 2**e - 1 / k) <= 1 / k * 0.01 + 2 ** -(e + 1)


def test_tv_o1_conv():
    op = mkop("Conv", weights=("filter", "bias"), kernel_shape=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0),
              dilations=(1, 1), group=1, do_relu=False, relu_limit=-1.0)
    W = np.array([0.5, -0.3, 0.12, 0.05], np.float32).reshape(1, 4, 1, 1)
    b = np.array([0.1], np.float32)
    qp = qparams_for(op, {"filter": W, "bias": b}, (4.0,), 8.0, True, True)
    assert int(qp["r"]) == 8 and qp["w8"].ravel().tolist() == [64, -38, 15, 6] and qp["b16"].tolist() == [406]
    q = quantize(jnp.array([1.0, -0.7, 2.5, 3.9]).reshape(1, 4, 1, 1), 4.0, True)
    assert q.ravel().tolist() == [32, -22, 79, 124]
    assert int(int8_op(op, None, [q], qp).ravel()[0]) == 20
    out, info = O.conv(np.asarray(q), W, b, 4.0, 8.0, True, True, (1, 1), (0, 0, 0, 0), (1, 1), 1, False)
    assert out.ravel().tolist() == [20] and info["r"] == 8


def test_tv_o2_add():
    op = mkop("Add", n_in=2)
    qp = qparams_for(op, {}, (2.0, 6.0), 8.0, True, True)
    assert qp["m"].tolist() == [64, 96] and qp["r"].tolist() == [8, 7]
    y = int8_op(op, None, [jnp.array([100]), jnp.array([-50])], qp)
    assert y.tolist() == [-12]
    assert O.add([np.array([100]), np.array([-50])], [2.0, 6.0], 8.0, [True, True], True)[0].tolist() == [-12]


def test_tv_o3_scale():
    op = mkop("Scale", weights=("scale", "bias"))
    qp = qparams_for(op, {"scale": np.array([0.5], np.float32), "bias": np.array([0.3], np.float32)}, (4.0,), 2.0,
                     True, True)
    assert qp["r"].tolist() == [6] and qp["a8"].tolist() == [64] and qp["b16"].tolist() == [1251]
    assert int8_op(op, None, [jnp.full((1, 1, 1, 1), 50)], qp).ravel().tolist() == [69]


def test_tv_o4_avgpool():
    op = mkop("AvgPool", kernel_shape=(3, 3), strides=(1, 1), pads=(0, 0, 0, 0), count_include_pad=True)
    qp = qparams_for(op, {}, (4.0,), 4.0, False, False)
    for total in (900, 936):
        x = np.full((1, 1, 3, 3), total // 9, np.int32)
        x.ravel()[: total % 9] += 1
        assert int(int8_op(op, None, [jnp.asarray(x)], qp).ravel()[0]) == total // 9 + (total == 936) * 0
    assert O.rsr(936 * 57, 9) == 104 and O.rsr(900 * 57, 9) == 100


def test_tv_o5_leaky():
    op = mkop("LeakyRelu", alpha=0.1)
    qp = qparams_for(op, {}, (4.0,), 4.0, True, True)
    assert int(qp["m"][0]) == 51 and int(qp["r"][0]) == 9
    assert int8_op(op, None, [jnp.array([-100, -7, 55])], qp).tolist() == [-10, -1, 55]


def test_tv_o6_sigmoid_lut():
    op = mkop("Sigmoid")
    qp = qparams_for(op, {}, (8.0,), 1.0, True, False)
    codes = jnp.array([-128, -64, 0, 1, 64, 127])
    assert int8_op(op, None, [codes], qp).tolist() == [0, 4, 128, 132, 251, 255]
    tab = O.lut(O.sigmoid, 8.0, 1.0, True, False)
    assert qp["lut"].tolist() == [tab[c] for c in range(-128, 128)]


def test_worked_concat_examples():
    for x, exp in [(2 / 3, (85, 7)), (0.5, (1, 1)), (0.3, (77, 8)), (1.7, (109, 6))]:
        assert tuple(int(v) for v in get_scale_and_shift_positive(x)) == exp
    op = mkop("Concat", n_in=2, axis=1)
    qp = qparams_for(op, {}, (2.0, 3.0), 3.0, True, True)
    assert qp["m"].tolist() == [85, 1] and qp["r"].tolist() == [7, 0]


@pytest.mark.parametrize("k", [1, 2, 3, 7, 9, 16, 25, 49, 225])
def test_avgpool_kernel_matches_oracle(k):
    kh = int(np.sqrt(k)) if int(np.sqrt(k)) ** 2 == k else 1
    kw = k // kh
    rng = np.random.default_rng(k)
    x = rng.integers(0, 256, (1, 2, kh, kw)).astype(np.int32)
    op = mkop("AvgPool", kernel_shape=(kh, kw), strides=(1, 1), pads=(0, 0, 0, 0), count_include_pad=True)
    qp = qparams_for(op, {}, (4.0,), 4.0, False, False)
    got = np.asarray(int8_op(op, None, [jnp.asarray(x)], qp))
    exp = O.avgpool(x, (kh, kw), (1, 1), (0, 0, 0, 0), True, False)
    assert got.tolist() == exp.tolist()
