"""Per-chip INT8 lowering rules: BM1684 (docs/bm1684.md) and BM1684X (symmetric INT8, docs/bm1684x.md)."""

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
    mix_float_type: str = "F32"  # what "float" layers of a mixed model run in (``--fp_type``; BM1684X: F16)
    conv_negative_rshift_fallback: bool = True  # Conv rshift < 0 -> F32
    matmul_clamp_rshift: bool = True  # MatMul: r = max(r, 0) (no fallback)
    add_clamp_rshift: bool = True  # Add: r_k = max(r_k, 0)
    mul_multiplier_range: tuple[int, int] = (0, 127)  # Mul: m outside -> F32
    avgpool_output_is_input_qtype: bool = True  # AvgPool output threshold = input threshold
    relu_limit_in_int8: bool = False  # False: INT8 ignores relu_limit (output saturation is the clamp)
    # BM1684X-style requantization (docs/bm1684x.md); the BM1684 values keep BM1684's rules
    add_requant: str = "cblas"  # Add: "cblas" (calRightShiftNumUseCblas + to_int8) | "positive" (get_scale_and_shift_positive)
    avgpool_requant: str = "table"  # AvgPool: "table" (the dev tables' (M, E) of k) | "scale_and_shift" (s_in/(s_out*k))
    int8_kinds: frozenset | None = None  # op kinds qsens models in INT8 on this chip (None: every kind of qparams.SUPPORTED)
    mix_float_types: tuple[str, ...] = ("F32",)  # float types a mixed model may use (run_qtable's --fp_type choices)
    weight_operand_int8: bool = True  # Add/Mul with a full-tensor weight operand lowered to INT8 (as modelled here)


BM1684 = ChipSpec(name="BM1684")

#: BM1684X, symmetric INT8 (TPU-MLIR lib/Conversion/TopToTpu/BM1684X/*.cpp; every rule checked against TPU-MLIR 1.23's
#: interpreter on MTCNN PNet, gen_act and gen_pool: tests/test_bm1684x_oracle.py, docs/bm1684x.md).  Per-channel int32
#: multiplier + rshift (MultiplierShift, HALF_UP) for Conv, per-tensor for MatMul, int32 bias, no rshift < 0 / stride /
#: kernel-area F32 fallbacks, AvgPool requantizes to its own output threshold.  Ops whose BM1684X lowering qsens does not
#: model stay F32 (``int8_kinds``; ``qsens ops --int8-report --chip bm1684x`` lists them).
BM1684X = ChipSpec(
    name="BM1684X",
    bias_bits=32,
    max_pool_kernel=2**31 - 1,
    max_conv_stride=2**31 - 1,
    per_channel_conv=True,
    conv_negative_rshift_fallback=False,
    avgpool_output_is_input_qtype=False,
    add_requant="positive",
    avgpool_requant="scale_and_shift",
    int8_kinds=frozenset({"Conv", "MatMul", "Add", "MaxPool", "AvgPool", "GlobalAvgPool", "Concat", "LeakyRelu",
                          "PRelu", "Sigmoid", "Softmax", "HardSigmoid", "Exp", "Tanh", "Scale", "SubConst", "Mul",
                          "Deconv", "AddConst", "MulConst", "HardSwish", "SiLU", "Softplus", "Upsample"}),
    mul_multiplier_range=(-(2**31), 2**31 - 1),  # no Mul F32 fallback on BM1684X (its multiplier is 8-bit by construction)
    mix_float_type="F16",  # TPU-MLIR's FLOAT_MAP: a BM1684X mixed model's float layers are F16 (--fp_type auto)
    mix_float_types=("F16", "F32"),
    weight_operand_int8=True,  # Add / Mul with a full-tensor weight: INT8 (gen_wconst's mul5, add10, mul12, bit-exact)
)

CHIPS: dict[str, ChipSpec] = {"BM1684": BM1684, "BM1684X": BM1684X}


def get_chip(name: str) -> ChipSpec:
    try:
        return CHIPS[name.upper()]
    except KeyError:
        from qsens.errors import QsensError

        raise QsensError(f"--chip {name}: unsupported chip; use one of {', '.join(c.lower() for c in CHIPS)}") from None


def as_chip(chip: ChipSpec | str | None) -> ChipSpec:
    """A :class:`ChipSpec` from a spec, a name (``bm1684``, ``bm1684x``, any case) or None (BM1684)."""
    if chip is None:
        return BM1684
    return chip if isinstance(chip, ChipSpec) else get_chip(chip)


def resolve_fp_type(chip: ChipSpec | str | None, fp_type: str = "auto") -> str:
    """The float type of a mixed model's float layers for ``--fp_type`` on ``chip``.

    TPU-MLIR (python/calibration/utils.py ``FLOAT_MAP`` / ``chip_support_mix_fp_type``, 1.23): ``auto`` is F32 on
    BM1684 and F16 on BM1684X, whose allowed types are F16 and F32 (BF16 is refused on both).  qsens simulates both
    (F16 layers: :func:`qsens.onnx.convert.float_type_op`, checked against TPU-MLIR's F16 models and its BM1684X
    sensitive search); any other type is a one-line error."""
    from qsens.errors import QsensError

    spec = as_chip(chip)
    want = str(fp_type).upper()
    if want == "AUTO":
        return spec.mix_float_type
    if want not in spec.mix_float_types:
        raise QsensError(f"--fp_type {fp_type}: {spec.name} mixes INT8 with {' or '.join(spec.mix_float_types)} only "
                         f"(TPU-MLIR's chip_support_mix_fp_type); use auto or {' / '.join(spec.mix_float_types)}")
    return want


def with_fp_type(chip: ChipSpec | str | None, fp_type: str = "auto") -> ChipSpec:
    """``chip`` whose mixed models run their float layers in ``--fp_type`` (:func:`resolve_fp_type`)."""
    spec = as_chip(chip)
    want = resolve_fp_type(spec, fp_type)
    return spec if want == spec.mix_float_type else dataclasses.replace(spec, mix_float_type=want)
