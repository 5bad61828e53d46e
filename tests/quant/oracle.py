"""Independent BM1684 INT8 oracle, written from the spec (tpu-mlir-semantics.md §3) with Python ints and Fractions.

Imports nothing from qsens.quant.  IEEE rounding of the C++ ``double``/``float`` intermediates is emulated
exactly (``f64``/``f32``: round-to-nearest-even of a Fraction to 53/24 significant bits), so the oracle is
bit-exact by construction, including at .5 ties.  Each op returns ``(codes, info)`` with ``info`` flags used by
the tests to count which corner cases were hit.
"""

from __future__ import annotations

import math
from fractions import Fraction as Fr

import numpy as np

INT16 = (-32768, 32767)


def rnd(x, p: int) -> Fr:
    x = Fr(x)
    if x == 0:
        return Fr(0)
    sign = -1 if x < 0 else 1
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if (Fr(2) ** e) > a:
        e -= 1
    scale = p - 1 - e
    n = a * (Fr(2) ** scale)
    q, rem = divmod(n.numerator, n.denominator)
    if 2 * rem > n.denominator or (2 * rem == n.denominator and q % 2 == 1):
        q += 1
    return sign * Fr(q) / (Fr(2) ** scale)


def f64(x) -> Fr:
    return rnd(x, 53)


def f32(x) -> Fr:
    return rnd(x, 24)


def rhaz(x) -> int:
    x = Fr(x)
    a = math.floor(abs(x) + Fr(1, 2))
    return a if x >= 0 else -a


def is_half(x) -> bool:
    x = Fr(x)
    return (x - math.floor(x)) == Fr(1, 2)


def sat(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def qrange(signed: bool):
    return (-128, 127) if signed else (0, 255)


def rsr(v: int, r: int, mode: str = "HALF_UP") -> int:
    if r <= 0:
        return v * 2 ** (-r)
    x = Fr(v, 2**r)
    fl = math.floor(x)
    frac = x - fl
    if mode == "HALF_UP":
        return fl + (1 if frac >= Fr(1, 2) else 0)
    if mode == "DOWN":
        return fl
    if mode == "HALF_AWAY":
        return rhaz(x)
    if mode == "HALF_EVEN":
        if frac == Fr(1, 2):
            return fl + (fl % 2)
        return fl + (1 if frac > Fr(1, 2) else 0)
    if mode == "UP":
        return math.ceil(x)
    if mode == "TOWARDS_ZERO":
        return math.trunc(x)
    raise ValueError(mode)


def rsr_is_tie(v: int, r: int) -> bool:
    return r > 0 and v % (2**r) == 2 ** (r - 1)


def s_of(th, signed: bool) -> Fr:
    return f64(Fr(th) / (127 if signed else 255))


def cal_rshift(maxw, s_in, s_out) -> int:
    d = f64(f64(Fr(f32(maxw)) * s_in) / s_out)
    if d <= 0:
        return 0
    m = 0
    while d < 127:
        d *= 2
        m += 1
    return 31 if m > 32 else m - 1


def floor_log2(y: Fr) -> int:
    e = y.numerator.bit_length() - y.denominator.bit_length()
    if Fr(2) ** e > y:
        e -= 1
    return e


def cblas(a, s_in, s_out) -> int:
    den = f64(f64(abs(f32(a)) * s_in) / s_out)
    if den == 0:
        return 31
    return min(floor_log2(f64(Fr(127) / den)), 31)


def scale_shift(x, positive: bool):
    xf = f32(x)
    min_err = None
    shift = None
    for n in range(0 if positive else -32, 31):
        p = Fr(2) ** n
        m = rhaz(xf * p)
        err = f32(f64(abs(Fr(m) / p - xf)))
        if (min_err is None or err < min_err) and abs(m) < 127:
            min_err, shift = err, n
    if shift is None:
        shift = 0
    return rhaz(xf * Fr(2) ** shift), shift


def avgpool_table(k: int):
    e = 0
    while rhaz(Fr(2 ** (e + 1), k)) <= 255:
        e += 1
    m = rhaz(Fr(2**e, k))
    while m > 0 and m % 2 == 0 and e > 0:
        m //= 2
        e -= 1
    return m, e


def quantize(x, th, signed: bool) -> int:
    inv = f32(f64(1 / s_of(th, signed)))
    lo, hi = qrange(signed)
    return sat(rhaz(f32(Fr(float(x)) * inv)), lo, hi)


# ------------------------------------------------------------------------------------------------ lowering
def _bias16(b, s_out, r):
    bs = f32(f64(Fr(2) ** r / s_out))
    q = [rhaz(f32(Fr(float(v)) * bs)) for v in b]
    over = sum(1 for v in q if v > 32767 or v < -32768)
    return [sat(v, *INT16) for v in q], over


def lower_conv_like(W, b, th_in, th_out, s_in_signed, matmul=False):
    """-> dict(r0, r, w8 (np int64 same shape), b16 (list), fallback, ties)."""
    s_in = s_of(th_in, s_in_signed[0])
    s_out = s_of(th_out, s_in_signed[1])
    Wl = [float(v) for v in np.asarray(W, np.float32).ravel()]
    maxw = max(abs(v) for v in Wl) if Wl else 0.0
    r0 = cal_rshift(maxw, s_in, s_out)
    fallback = (r0 < 0) and not matmul
    r = max(r0, 0)
    b16 = None
    if b is not None:
        bl = [float(v) for v in np.asarray(b, np.float32).ravel()]
        b16, over = _bias16(bl, s_out, r)
        while f32(Fr(over)) / f32(Fr(len(bl))) > Fr(0.03) and r > 0:
            r -= 1
            b16, over = _bias16(bl, s_out, r)
    scale = f32(f64(f64(Fr(2) ** r * s_in) / s_out))
    prods = [f32(Fr(v) * scale) for v in Wl]
    ties = sum(1 for p in prods if is_half(p))
    w8 = np.array([sat(rhaz(p), -128, 127) for p in prods], np.int64).reshape(np.shape(W))
    return dict(r0=r0, r=r, w8=w8, b16=b16, fallback=fallback, ties=ties, backoff=r < max(r0, 0))


def conv(q, W, b, th_in, th_out, signed_in, signed_out, strides, pads, dil, group, do_relu):
    low = lower_conv_like(W, b, th_in, th_out, (signed_in, signed_out))
    q = np.asarray(q, np.int64)
    w8 = low["w8"]
    N, C, H, Wd = q.shape
    O, Cg, kh, kw = w8.shape
    t, l, bo, ri = pads
    OH = (H + t + bo - dil[0] * (kh - 1) - 1) // strides[0] + 1
    OW = (Wd + l + ri - dil[1] * (kw - 1) - 1) // strides[1] + 1
    lo, hi = qrange(signed_out)
    out = np.zeros((N, O, OH, OW), np.int64)
    info = dict(low, saturated=0, rsr_ties=0)
    opg = O // group
    for n in range(N):
        for o in range(O):
            g = o // opg
            for y in range(OH):
                for x in range(OW):
                    acc = 0
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                yy = y * strides[0] - t + i * dil[0]
                                xx = x * strides[1] - l + j * dil[1]
                                if 0 <= yy < H and 0 <= xx < Wd:
                                    acc += int(q[n, g * Cg + c, yy, xx]) * int(w8[o, c, i, j])
                    if low["b16"] is not None:
                        acc += low["b16"][o]
                    info["rsr_ties"] += rsr_is_tie(acc, low["r"])
                    v = rsr(acc, low["r"])
                    if do_relu:
                        v = max(v, 0)
                    info["saturated"] += not (lo <= v <= hi)
                    out[n, o, y, x] = sat(v, lo, hi)
    return out, info


def matmul(q, W, b, th_in, th_out, signed_in, signed_out, do_relu):
    low = lower_conv_like(W, b, th_in, th_out, (signed_in, signed_out), matmul=True)
    q = np.asarray(q, np.int64)
    w8 = low["w8"]
    lo, hi = qrange(signed_out)
    M, K = q.shape
    N = w8.shape[1]
    out = np.zeros((M, N), np.int64)
    info = dict(low, saturated=0)
    for i in range(M):
        for j in range(N):
            acc = sum(int(q[i, k]) * int(w8[k, j]) for k in range(K))
            if low["b16"] is not None:
                acc += low["b16"][j]
            v = rsr(acc, low["r"])
            if do_relu:
                v = max(v, 0)
            info["saturated"] += not (lo <= v <= hi)
            out[i, j] = sat(v, lo, hi)
    return out, info


def add(qs, ths, th_out, signeds, signed_out, coeffs=None, do_relu=False):
    s_out = s_of(th_out, signed_out)
    coeffs = coeffs or [1.0] * len(qs)
    ms, rs = [], []
    fallback = False
    for th, sg, c in zip(ths, signeds, coeffs):
        s = s_of(th, sg)
        r = max(0, cblas(c, s, s_out))
        scale = f32(f64(f64(Fr(2) ** r * s) / s_out))
        m = sat(rhaz(f32(f32(Fr(c)) * scale)), -128, 127)
        fallback |= m < 0
        ms.append(m)
        rs.append(r)
    lo, hi = qrange(signed_out)
    arrs = [np.asarray(q, np.int64) for q in qs]
    shape = np.broadcast_shapes(*[a.shape for a in arrs])
    arrs = [np.broadcast_to(a, shape) for a in arrs]
    out = np.zeros(shape, np.int64)
    info = dict(m=ms, r=rs, fallback=fallback, saturated=0, rsr_ties=0)
    for idx in np.ndindex(shape):
        y = 0
        for a, m, r in zip(arrs, ms, rs):
            info["rsr_ties"] += rsr_is_tie(int(a[idx]) * m, r)
            y += rsr(int(a[idx]) * m, r)
        if do_relu:
            y = max(y, 0)
        info["saturated"] += not (lo <= y <= hi)
        out[idx] = sat(y, lo, hi)
    return out, info


def scale_op(q, a, b, th_in, th_out, signed_in, signed_out, do_relu=False):
    s_in, s_out = s_of(th_in, signed_in), s_of(th_out, signed_out)
    q = np.asarray(q, np.int64)
    C = q.shape[1]
    lo, hi = qrange(signed_out)
    mid = INT16 if signed_out else (0, 65535)
    out = np.zeros_like(q)
    info = dict(r=[], a8=[], b16=[], saturated=0, backoff=0, negative_r=0)
    for c in range(C):
        av, bv = float(np.float32(a[c])), float(np.float32(b[c]))
        r = cblas(av, s_in, s_out)
        r_init = r
        b16, over = _bias16([bv], s_out, r)
        while over > 0 and r > 0:
            r -= 1
            b16, over = _bias16([bv], s_out, r)
        info["backoff"] += r < r_init
        info["negative_r"] += r < 0
        b16 = b16[0]
        if r > 0:
            shifted = ((b16 + 2 ** (r - 1) + 32768) % 65536) - 32768
            b16 = max(shifted, b16)
        scale = f32(f64(f64(Fr(2) ** r * s_in) / s_out))
        a8 = sat(rhaz(f32(Fr(av) * scale)), -128, 127)
        info["r"].append(r)
        info["a8"].append(a8)
        info["b16"].append(b16)
        for idx in np.ndindex(q[:, c].shape):
            full = (idx[0], c) + idx[1:]
            res = sat(int(q[full]) * a8 + b16, *mid)
            v = rsr(res, r, "DOWN")
            if do_relu:
                v = max(v, 0)
            info["saturated"] += not (lo <= v <= hi)
            out[full] = sat(v, lo, hi)
    return out, info


def mul(q0, q1, th0, th1, th_out, sg0, sg1, signed_out):
    sc = f64(f64(s_of(th0, sg0) * s_of(th1, sg1)) / s_of(th_out, signed_out))
    m, r = scale_shift(sc, positive=False)
    r = min(max(0, r), 31)
    fallback = m < 0 or m > 127
    lo, hi = qrange(signed_out)
    a, b = np.broadcast_arrays(np.asarray(q0, np.int64), np.asarray(q1, np.int64))
    out = np.zeros(a.shape, np.int64)
    info = dict(m=m, r=r, fallback=fallback, saturated=0)
    for idx in np.ndindex(a.shape):
        v = rsr(int(a[idx]) * int(b[idx]) * m, r)
        info["saturated"] += not (lo <= v <= hi)
        out[idx] = sat(v, lo, hi)
    return out, info


def concat(qs, ths, th_out, signeds, signed_out, axis=1):
    s_out = s_of(th_out, signed_out)
    lo, hi = qrange(signed_out)
    parts = []
    info = dict(passthrough=0, saturated=0)
    for q, th, sg in zip(qs, ths, signeds):
        q = np.asarray(q, np.int64)
        s = s_of(th, sg)
        if s == s_out and sg == signed_out:
            info["passthrough"] += 1
            parts.append(q)
            continue
        m, r = scale_shift(f64(s / s_out), positive=True)
        o = np.zeros_like(q)
        for idx in np.ndindex(q.shape):
            v = rsr(int(q[idx]) * m, r)
            info["saturated"] += not (lo <= v <= hi)
            o[idx] = sat(v, lo, hi)
        parts.append(o)
    return np.concatenate(parts, axis=axis), info


def leaky(q, alpha, signed_out):
    m, r = scale_shift(alpha, positive=False)
    lo, hi = qrange(signed_out)
    q = np.asarray(q, np.int64)
    f = np.vectorize(lambda v: sat(int(v) if v >= 0 else rsr(int(v) * m, r), lo, hi), otypes=[np.int64])
    return f(q), dict(m=m, r=r)


def avgpool(q, kernel, strides, pads, count_include_pad, signed):
    q = np.asarray(q, np.int64)
    N, C, H, W = q.shape
    kh, kw = kernel
    t, l, b, r_ = pads
    k = kh * kw
    M, E = avgpool_table(k)
    OH = (H + t + b - kh) // strides[0] + 1
    OW = (W + l + r_ - kw) // strides[1] + 1
    lo, hi = qrange(signed)
    out = np.zeros((N, C, OH, OW), np.int64)
    for n in range(N):
        for c in range(C):
            for y in range(OH):
                for x in range(OW):
                    s, cnt = 0, 0
                    for i in range(kh):
                        for j in range(kw):
                            yy, xx = y * strides[0] - t + i, x * strides[1] - l + j
                            if 0 <= yy < H and 0 <= xx < W:
                                s += int(q[n, c, yy, xx])
                                cnt += 1
                    if count_include_pad:
                        cnt = k
                    avg = f32(Fr(s, cnt))
                    tot = rhaz(f32(avg * k))
                    out[n, c, y, x] = sat(rsr(tot * M, E), lo, hi)
    return out


def maxpool(q, kernel, strides, pads):
    q = np.asarray(q, np.int64)
    N, C, H, W = q.shape
    kh, kw = kernel
    t, l, b, r_ = pads
    OH = (H + t + b - kh) // strides[0] + 1
    OW = (W + l + r_ - kw) // strides[1] + 1
    out = np.zeros((N, C, OH, OW), np.int64)
    for idx in np.ndindex(out.shape):
        n, c, y, x = idx
        vals = [
            int(q[n, c, y * strides[0] - t + i, x * strides[1] - l + j])
            for i in range(kh)
            for j in range(kw)
            if 0 <= y * strides[0] - t + i < H and 0 <= x * strides[1] - l + j < W
        ]
        out[idx] = max(vals)
    return out


def lut(fn, th_in, th_out, signed_in, signed_out):
    s_in, s_out = s_of(th_in, signed_in), s_of(th_out, signed_out)
    lo_in, hi_in = qrange(signed_in)
    lo, hi = qrange(signed_out)
    return {c: sat(rhaz(Fr(fn(float(c * s_in))) / s_out), lo, hi) for c in range(lo_in, hi_in + 1)}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------ constant-operand ops (issue 12)
def const_op(kind, q, c, th_in, th_out, signed_in, signed_out, is_reverse=True, do_relu=False):
    """AddConst / SubConst / MulConst (TopToTpu/BM1684/{AddConst,SubConst,MulConst}.cpp, Tpu interpreter)."""
    s_in, s_out = s_of(th_in, signed_in), s_of(th_out, signed_out)
    lo, hi = qrange(signed_out)
    if kind == "MulConst":
        r = max(cblas(c, s_in, s_out), 0)
        m = sat(rhaz(f32(f32(Fr(float(np.float32(c)))) * f32(f64(f64(Fr(2) ** r * s_in) / s_out)))), -128, 127)
        cq = 0
    else:
        r = cblas(1.0, s_in, s_out)
        if kind == "AddConst":
            r = max(r, 0)
        m = sat(rhaz(f32(f64(f64(Fr(2) ** r * s_in) / s_out))), -128, 127)
        cq = _bias16([float(np.float32(c))], s_out, r)[0][0]
    out = []
    for v in np.asarray(q, np.int64).ravel().tolist():
        if kind == "MulConst":
            t = v * m
        elif kind == "AddConst":
            t = v * m + cq
        else:
            t = cq - v * m if is_reverse else v * m - cq
            if do_relu:
                t = max(t, 0)
        y = rsr(t, r)
        if do_relu:
            y = max(y, 0)
        out.append(sat(y, lo, hi))
    return np.array(out, np.int64).reshape(np.shape(q)), dict(r=r, m=m, c=cq)


def deconv(q, W, b, th_in, th_out, signed_in, signed_out, strides, pads, group, do_relu):
    """ConvTranspose in BM1684 INT8 (Deconv.cpp: the Conv recipe; W (Cin, Cout/g, kh, kw)); the interpreter
    saturates with to_int8 even for a uint8 output."""
    low = lower_conv_like(W, b, th_in, th_out, (signed_in, signed_out))
    q = np.asarray(q, np.int64)
    w8 = low["w8"]
    N, C, H, Wd = q.shape
    _, Og, kh, kw = w8.shape
    t, l, bo, ri = pads
    OH = (H - 1) * strides[0] + kh - t - bo
    OW = (Wd - 1) * strides[1] + kw - l - ri
    cg = C // group
    acc = np.zeros((N, Og * group, OH, OW), np.int64)
    for n in range(N):
        for ci in range(C):
            g = ci // cg
            for iy in range(H):
                for ix in range(Wd):
                    for o in range(Og):
                        for i in range(kh):
                            for j in range(kw):
                                y, x = iy * strides[0] - t + i, ix * strides[1] - l + j
                                if 0 <= y < OH and 0 <= x < OW:
                                    acc[n, g * Og + o, y, x] += int(q[n, ci, iy, ix]) * int(w8[ci, o, i, j])
    lo, hi = qrange(signed_out)
    hi = min(hi, 127)
    out = np.zeros_like(acc)
    for idx, v in np.ndenumerate(acc):
        v = int(v) + (low["b16"][idx[1]] if low["b16"] is not None else 0)
        v = rsr(v, low["r"])
        if do_relu:
            v = max(v, 0)
        out[idx] = sat(v, lo, hi)
    return out, low
