"""Integer rounding / shift / multiplier primitives of TPU-MLIR (MathUtils), in JAX and NumPy.

Every function names its rounding mode explicitly (:class:`Round`); nothing relies on a default of
``jnp.round`` (which is half-to-even).  The jnp versions are jit-able and accept traced arrays (thresholds
are dynamic); the ``*_np`` / host versions are for static tables.

Truth tables (AQT style).  ``round_to_int(x, mode)`` on floats:

====================  =====  =====  =====  =====  =====  =====  =====  =====
mode                   -2.5   -1.5   -0.5   -0.4    0.4    0.5    1.5    2.5
====================  =====  =====  =====  =====  =====  =====  =====  =====
HALF_AWAY_FROM_ZERO     -3     -2     -1      0      0      1      2      3
HALF_UP                 -2     -1      0      0      0      1      2      3
HALF_TO_EVEN            -2     -2      0      0      0      0      2      2
HALF_DOWN               -3     -2     -1      0      0      0      1      2
DOWN (floor)            -3     -2     -1     -1      0      0      1      2
UP (ceil)               -2     -1      0      0      1      1      2      3
TOWARDS_ZERO            -2     -1      0      0      0      0      1      2
====================  =====  =====  =====  =====  =====  =====  =====  =====

``rshift_round(v, 1, mode)`` on integers (= ``round_to_int(v / 2, mode)``, computed exactly on the bits like
C++ ``RightShiftRound``: ``val = v >> r`` (arithmetic), ``mant = v & (2^r-1)``, ``half = 2^(r-1)``):

====================  ====  ====  ====  ====  ====  ====
mode                    -5    -3    -1     1     3     5
====================  ====  ====  ====  ====  ====  ====
HALF_AWAY_FROM_ZERO     -3    -2    -1     1     2     3
HALF_UP                 -2    -1     0     1     2     3
HALF_TO_EVEN            -2    -2     0     0     2     2
DOWN                    -3    -2    -1     0     1     2
UP                      -2    -1     0     1     2     3
TOWARDS_ZERO            -2    -1     0     0     1     2
====================  ====  ====  ====  ====  ====  ====

``r == 0`` is the identity and ``r < 0`` is a left shift by ``-r`` (C++ leaves ``src >> negative`` undefined;
every BM1684 caller that can produce ``r < 0`` (Scale ``lshift``, LeakyReLU) means a left shift).  ``r`` is
clamped to ``bitwidth-1`` (31 for int32, 63 for int64) like C++ clamps at 63.

Floating-point helpers reproduce the C++ evaluation order and precision (``double`` vs ``float``) of TPU-MLIR
``MathUtils.cpp``.  They run under ``jax.enable_x64(True)`` internally (also inside an outer non-x64 ``jit``:
the float64 ops are staged into the outer jaxpr) and always return int32 / float32 / bool arrays.
``log(x)/log(2)`` in ``calRightShiftNumUseCblas`` is replaced by the exact ``floor(log2(x))`` (from the
exponent bits); the two differ only for ``x`` within a few ulps of a power of two (or exactly ``2^k`` for
some ``k <= -29``, which cannot occur for 8-bit shifts).
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np


class Round(enum.Enum):
    HALF_AWAY_FROM_ZERO = "half_away_from_zero"  # C std::round; TPU-MLIR to_int8 default
    HALF_UP = "half_up"  # floor(x + 0.5); BM1684 requant shift
    HALF_TO_EVEN = "half_to_even"  # numpy / jnp round
    HALF_DOWN = "half_down"  # ceil(x - 0.5)
    DOWN = "down"  # floor
    TOWARDS_ZERO = "towards_zero"  # trunc
    UP = "up"  # ceil


QTYPE_RANGE: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int32": (-(2**31), 2**31 - 1),
}


def qtype_of(signed: bool, bits: int = 8) -> str:
    return ("int" if signed else "uint") + str(bits)


def qrange(signed: bool, bits: int = 8) -> tuple[int, int]:
    return QTYPE_RANGE[qtype_of(signed, bits)]


def qmax_of(signed: bool) -> int:
    """The divisor of the threshold: 127 (int8) or 255 (uint8)."""
    return 127 if signed else 255


_BACKEND: contextvars.ContextVar = contextvars.ContextVar("qsens_quant_backend", default=jnp)


def backend():
    """The array module the quantization parameter maths runs on: ``jax.numpy`` (default, traceable) or
    ``numpy`` (host, float64 natively) inside :func:`host_numpy`."""
    return _BACKEND.get()


@contextlib.contextmanager
def host_numpy():
    """Run the threshold -> parameter maths on the host with NumPy (same code, same float64/float32 steps)."""
    tok = _BACKEND.set(np)
    try:
        yield
    finally:
        _BACKEND.reset(tok)


def x64(fn):
    """Run ``fn`` with float64 enabled (works inside an outer non-x64 trace too)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------------------ rounding
def _round(xp, x, mode: Round):
    if mode is Round.HALF_AWAY_FROM_ZERO:
        t = xp.trunc(x)
        f = x - t  # exact for binary floats
        return t + xp.where(xp.abs(f) >= 0.5, xp.sign(x), xp.zeros_like(x))
    if mode is Round.HALF_UP:
        fl = xp.floor(x)
        return fl + xp.where(x - fl >= 0.5, xp.ones_like(x), xp.zeros_like(x))
    if mode is Round.HALF_DOWN:
        c = xp.ceil(x)
        return c - xp.where(c - x >= 0.5, xp.ones_like(x), xp.zeros_like(x))
    if mode is Round.HALF_TO_EVEN:
        return xp.round(x)
    if mode is Round.DOWN:
        return xp.floor(x)
    if mode is Round.UP:
        return xp.ceil(x)
    if mode is Round.TOWARDS_ZERO:
        return xp.trunc(x)
    raise ValueError(f"unknown rounding mode {mode!r}")


def round_to_int(x, mode: Round):
    """Round a float array to integral values (same float dtype) with ``mode`` (jnp, jit-able)."""
    xp = backend()
    return _round(xp, xp.asarray(x), mode)


def round_to_int_np(x, mode: Round):
    return _round(np, np.asarray(x), mode)


def saturate(v, qtype: str, mode: Round = Round.HALF_AWAY_FROM_ZERO):
    """TPU-MLIR ``saturate``: round floats with ``mode`` (integers pass), clamp to ``qtype``; int32 result."""
    xp = backend()
    lo, hi = QTYPE_RANGE[qtype]
    v = xp.asarray(v)
    if xp.issubdtype(v.dtype, xp.floating):
        v = xp.clip(round_to_int(v, mode), lo, hi)
        return v.astype(xp.int32)
    return xp.clip(v, lo, hi).astype(xp.int32)


def saturate_np(v, qtype: str, mode: Round = Round.HALF_AWAY_FROM_ZERO):
    lo, hi = QTYPE_RANGE[qtype]
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.floating):
        v = round_to_int_np(v, mode)
    return np.clip(v, lo, hi).astype(np.int64)


def to_int8(x, signed: bool = True):
    """C++ ``to_int8`` / ``to_uint8``: half away from zero, then saturate (int32 codes)."""
    return saturate(x, qtype_of(signed), Round.HALF_AWAY_FROM_ZERO)


# ------------------------------------------------------------------------------------------------ shifts
def _rshift_round(xp, v, r, mode: Round):
    v = xp.asarray(v)
    dt = v.dtype
    nbits = dt.itemsize * 8
    r = xp.asarray(r).astype(dt)
    rp = xp.clip(r, 0, nbits - 1)
    one = xp.ones_like(v)
    val = xp.right_shift(v, rp)  # arithmetic: floor(v / 2^rp)
    mask = xp.left_shift(one, rp) - one  # wraps correctly for rp = nbits-1
    mant = xp.bitwise_and(v, mask)  # v mod 2^rp, >= 0
    half = xp.left_shift(one, xp.maximum(rp - 1, 0))
    inc = xp.zeros_like(v)
    if mode is Round.HALF_UP:
        inc = (mant >= half).astype(dt)
    elif mode is Round.HALF_AWAY_FROM_ZERO:
        inc = xp.where(v >= 0, mant >= half, mant > half).astype(dt)
    elif mode is Round.HALF_TO_EVEN:
        inc = xp.where(mant == half, xp.bitwise_and(val, one), (mant > half).astype(dt)).astype(dt)
    elif mode is Round.HALF_DOWN:
        inc = (mant > half).astype(dt)
    elif mode is Round.DOWN:
        pass
    elif mode is Round.UP:
        inc = (mant != 0).astype(dt)
    elif mode is Round.TOWARDS_ZERO:
        inc = ((v < 0) & (mant != 0)).astype(dt)
    else:
        raise ValueError(f"unknown rounding mode {mode!r}")
    res = xp.where(rp > 0, val + inc, v)
    left = xp.left_shift(v, xp.clip(-r, 0, nbits - 1))
    return xp.where(r < 0, left, res)


def rshift_round(v, r, mode: Round = Round.HALF_UP):
    """C++ ``RightShiftRound(v, r, mode)`` on an int32/int64 jnp array; ``r`` broadcasts (may be traced)."""
    return _rshift_round(backend(), v, r, mode)


def rshift_round_np(v, r, mode: Round = Round.HALF_UP):
    """Host version on int64 numpy arrays."""
    return _rshift_round(np, np.asarray(v, np.int64), np.asarray(r, np.int64), mode)


def mul_shift(v, m, r, mode: Round = Round.HALF_UP):
    """``applyMultiplierAndRShift`` (MultiplierShift): ``RSR(v*m, r, mode)``."""
    return rshift_round(v * m, r, mode)


# ------------------------------------------------------------------------------------------------ shift/multiplier search
def _f64(x):
    xp = backend()
    return xp.asarray(x).astype(xp.float64)


def _as_f32_then_f64(x):
    """A C++ ``float`` parameter: the value is rounded to float32 first."""
    xp = backend()
    return xp.asarray(x).astype(xp.float32).astype(xp.float64)


@x64
def cal_right_shift_num(max_w, s_in, s_out, bits: int = 8):
    """``calRightShiftNum(float fmax, double s_in, double s_out)``: largest r with fmax*s_in/s_out*2^r < 127.

    ``d = (1.0*fmax*s_in)/s_out`` (double); ``m`` = number of doublings until ``d >= 127``;
    ``r = 31 if m > 32 else m - 1`` (``-1`` means F32 fallback for Conv); ``d <= 0`` gives 0.  Exact (no loop).
    """
    xp = backend()
    qmax = float((1 << (bits - 1)) - 1)
    d = (_as_f32_then_f64(max_w) * _f64(s_in)) / _f64(s_out)
    mant, e = xp.frexp(xp.where(d > 0, d, 1.0))
    qm, qe = np.frexp(qmax)
    m = xp.maximum(0, qe - e.astype(xp.int32) + xp.where(mant >= qm, 0, 1).astype(xp.int32))
    r = xp.where(m > 32, 31, m - 1)
    return xp.where(d > 0, r, 0).astype(xp.int32)


@x64
def cal_right_shift_num_use_cblas(a, s_in, s_out, bits: int = 8):
    """``calRightShiftNumUseCblas(float a, double s_in, double s_out)`` = ``min(31, floor(log2(127/(|a|*s_in/s_out))))``.

    Not clamped below (may be negative).  ``a == 0`` (log of inf in C++) gives 31.
    """
    xp = backend()
    qmax = float((1 << (bits - 1)) - 1)
    denom = (xp.abs(_as_f32_then_f64(a)) * _f64(s_in)) / _f64(s_out)
    y = qmax / xp.where(denom > 0, denom, 1.0)
    _, e = xp.frexp(y)
    m = e.astype(xp.int32) - 1  # exact floor(log2(y))
    m = xp.where(denom > 0, m, 31)
    return xp.minimum(m, 31).astype(xp.int32)


def _scale_and_shift(x, n_lo: int, bits: int):
    xf = _as_f32_then_f64(x)[..., None]
    xp = backend()
    n = xp.arange(n_lo, 31, dtype=xp.int32)
    p = xp.ldexp(xp.ones((), xp.float64), n)  # exact powers of two (exp2 is not exact in XLA)
    m = round_to_int(xf * p, Round.HALF_AWAY_FROM_ZERO)
    err = xp.abs(m / p - xf).astype(xp.float32)  # C++: float err = std::abs(double)
    m_limit = 2**31 - 1 if bits == 32 else 127  # CHAR_MAX for every bitwidth != 32
    valid = (xp.abs(m) < m_limit) & (err < np.finfo(np.float32).max)
    errm = xp.where(valid, err, xp.inf)
    # first minimum = C++ strict '<' scan (no xp.argmin: its int64 index breaks under an outer non-x64 jit)
    minv = xp.min(errm, axis=-1, keepdims=True)
    first = xp.min(xp.where(errm == minv, n, 99), axis=-1)
    found = xp.any(valid, axis=-1)
    shift = xp.where(found, first, 0)  # C++ leaves shift uninitialised when nothing is valid
    scale = round_to_int(xp.ldexp(xf[..., 0], shift), Round.HALF_AWAY_FROM_ZERO)
    return scale.astype(xp.int32), shift.astype(xp.int32)


@x64
def get_scale_and_shift_positive(x, bits: int = 8):
    """``get_scale_and_shift_positive(float x, m, r, bits)``: n in 0..30, ``|m| < 127`` (bits=8); -> (m, r)."""
    return _scale_and_shift(x, 0, bits)


@x64
def get_scale_and_shift(x, bits: int = 8):
    """``get_scale_and_shift(float x, m, r, bits)``: n in -32..30, ``|m| < 127`` (bits=8); -> (m, r)."""
    return _scale_and_shift(x, -32, bits)


def rshift_from_qscale(qscale, max_multiplier: int = 127):
    """TPU-MLIR ``getRShiftAndMultiplierFromQScale`` (non-QDM, MathUtils.cpp): the smallest ``r`` in 0..62 with
    ``qscale * 2^(r+1) >= max_multiplier`` (``r = 0`` when ``qscale > max_multiplier`` or none is found); float64."""
    xp = backend()
    q = _f64(qscale)
    r = xp.arange(63, dtype=np.float64)
    ok = q * xp.exp2(r + 1) >= max_multiplier
    # first True as a masked min (no xp.argmax: its int64 index breaks under an outer non-x64 jit or a jvp)
    first = xp.min(xp.where(ok, xp.arange(63, dtype=np.int32), 63))
    return xp.where((q > max_multiplier) | ~xp.any(ok), 0, first).astype(np.int32)


def multiplier_i8_from_qscale(qscale, r):
    """TPU-MLIR ``getMultiplierI8FromQScaleAndRShift``: ``(int8)(uint32)(qscale * 2^r)``, i.e. truncation toward
    zero (the values it is used for fit in int8)."""
    xp = backend()
    return xp.trunc(_f64(qscale) * xp.exp2(_f64(r))).astype(np.int32)


# ------------------------------------------------------------------------------------------------ AvgPool table
@functools.cache
def avgpool_multiplier_shift(k: int) -> tuple[int, int]:
    """BM1684 AvgPool ``(multiplier, rshift)`` for kernel area ``k`` (the 256-entry dev tables' rule).

    ``E = max e with RHAZ(2^e/k) <= 255``, ``M = RHAZ(2^E/k)``; then halve M and decrement E while M is even.
    """
    if k < 1:
        raise ValueError(f"avgpool kernel area must be >= 1, got {k}")

    def rhaz(fr: Fraction) -> int:  # positive fractions only
        return int((2 * fr.numerator + fr.denominator) // (2 * fr.denominator))

    e = 0
    while rhaz(Fraction(2 ** (e + 1), k)) <= 255:
        e += 1
    m = rhaz(Fraction(2**e, k))
    while m > 0 and m % 2 == 0 and e > 0:
        m //= 2
        e -= 1
    return m, e
