"""Per-chip INT8 lowering rules.  Only BM1684 is implemented; BM1684X etc. can be added as new instances."""

from __future__ import annotations

import dataclasses

from .numerics import Round


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """The numeric rules one chip's INT8 lowering + interpreter follow (hashable, usable as a static arg)."""

    name: str
    # rounding, per step
    cast_round: Round = Round.HALF_AWAY_FROM_ZERO  # FP32 -> INT8 cast: RHAZ(x * float32(1/s))
    weight_round: Round = Round.HALF_AWAY_FROM_ZERO  # to_int8(W * scale), to_int16(b * scale)
    requant_round: Round = Round.HALF_UP  # RSR after conv/matmul/add/mul/pool/concat/leakyrelu
    scale_op_round: Round = Round.DOWN  # Scale op shift (rounding offset pre-added to the bias)
    lut_round: Round = Round.HALF_AWAY_FROM_ZERO  # LUT table entries
    # lowering rules
    bias_bits: int = 16  # Conv/MatMul/Scale bias storage
    bias_overflow_tolerance: float = 0.03  # back off rshift while overflow ratio > this
    max_rshift: int = 31
    max_pool_kernel: int = 225  # Avg/MaxPool kernel area above this -> F32
    max_conv_stride: int = 15  # Conv stride above this -> F32
    per_channel_conv: bool = False  # BM1684: per-layer shift, multiplier 1
    mix_float_type: str = "F32"  # what "float" layers of a mixed model run in
    conv_negative_rshift_fallback: bool = True  # Conv rshift < 0 -> F32
    matmul_clamp_rshift: bool = True  # MatMul: r = max(r, 0) (no fallback)
    add_clamp_rshift: bool = True  # Add: r_k = max(r_k, 0)
    mul_multiplier_range: tuple[int, int] = (0, 127)  # Mul: m outside -> F32
    avgpool_output_is_input_qtype: bool = True  # AvgPool output threshold = input threshold
    relu_limit_in_int8: bool = False  # False: INT8 ignores relu_limit (output saturation is the clamp)


BM1684 = ChipSpec(name="BM1684")

CHIPS: dict[str, ChipSpec] = {"BM1684": BM1684}


def get_chip(name: str) -> ChipSpec:
    try:
        return CHIPS[name.upper()]
    except KeyError:
        from qsens.errors import QsensError

        raise QsensError(f"unsupported chip {name!r}; supported: {', '.join(CHIPS)}") from None
