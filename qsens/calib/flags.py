"""TPU-MLIR's calibration flags that change numbers: ``--histogram_bin_num``, ``--tune_list``, ``--debug_cmd``, and
``--fp_type`` (read from TPU-MLIR 1.23: ``tools/run_calibration.py``, ``tools/run_sensitive_layer.py``,
``calibration/kld_calibrator.py``, ``utils/misc.py`` ``parse_debug_cmd``, ``utils/fp_layer_search.py``).

* ``--histogram_bin_num N`` (default 2048): the bins of every activation histogram KL reads
  (``ActivationCalibrator.histogram_bin_num``); written as ``# histogram number: N`` in the table header.
* ``--tune_list FILE``: a data list (one sample per line, like ``--data_list``) for the SimpleTuner: run_calibration
  builds ``tune_ds = DataSelector(None, tune_num, tune_list)`` (its first ``tune_num`` lines when ``0 < tune_num <
  lines``, else all) and sets ``tune_num = len(tune_ds)``; the tuner then runs on those samples instead of the first
  ``tune_num`` calibration samples.  It is a list of *samples*, not of ops.
* ``--debug_cmd 'k1;k2=v;...'``: keys lower-cased, split on ``;`` and the first ``=`` (``parse_debug_cmd``).  What
  changes numbers in 1.23's run_calibration and is implemented here: ``use_percentile9999`` / ``use_mse`` /
  ``use_max`` pick the method (``process_compute_threshold``: Percentile9999 before MSE before MAX, each also when
  ``--cali_method`` names it), ``use_percentile9999`` also skips the tuner (``ActivationCalibrator.run``), and
  ``tune_steps=N`` sets the tuner's grid (``SimpleTuner.tune_steps``, default 21).  ``debug_log``,
  ``print_debug_info`` and ``dump_list`` change no number (``dump_list`` writes ``selected_image_list.txt``).
  TPU-MLIR keys qsens does not model are refused by name, and so is any other key.
* ``--fp_type auto|F16|BF16|F32``: the float type of float layers; ``auto`` is the chip's (``FLOAT_MAP``: BM1684 F32),
  and a type outside ``chip_support_mix_fp_type`` (BM1684: F32 only) is an error.
"""

from __future__ import annotations

import dataclasses
import os

from ..errors import QsensError

DEFAULT_BINS = 2048
DEFAULT_TUNE_STEPS = 21
#: keys qsens implements (no value) or accepts without a numeric effect
KEYS = ("use_max", "use_percentile9999", "use_mse", "tune_steps", "debug_log", "print_debug_info", "dump_list")
#: TPU-MLIR 1.23 keys that change numbers but are not modelled by qsens
UNSUPPORTED = {
    "use_torch_observer_for_cali": "torch observers (asymmetric scales)",
    "observer_type": "torch observers",
    "fp8": "FP8 tables (not a BM1684 type)",
    "int4": "INT4 tables (BM1684 has no 4-bit mode)",
    "find_lower_th": "the tuner's downward search",
    "min_tuned_diff": "the tuner's skip bound (TPU-MLIR 1.23 compares it as a string)",
    "not_use_fp32_tensor_as_ref": "the tuner's quantized references",
    "input_calibration_table": "tuning an existing table",
    "use_aciq_gauss": "ACIQ", "use_aciq_laplace": "ACIQ",
}


@dataclasses.dataclass(frozen=True)
class DebugCmd:
    keys: tuple[tuple[str, str | None], ...] = ()

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.keys)

    def value(self, key: str) -> str | None:
        return next((v for k, v in self.keys if k == key), None)

    def method(self, cali_method: str) -> str:
        """The method run_calibration 1.23 uses for ``--cali_method`` (qsens name) with these keys."""
        for m in ("percentile9999", "mse", "max"):
            if f"use_{m}" in self or cali_method == m:
                return m
        return cali_method

    @property
    def skips_tuning(self) -> bool:
        return "use_percentile9999" in self

    @property
    def tune_steps(self) -> int:
        v = self.value("tune_steps")
        return DEFAULT_TUNE_STEPS if v is None else int(v)


def parse_debug_cmd(text: str | None) -> DebugCmd:
    """TPU-MLIR's ``parse_debug_cmd``, then qsens's checks (one-line errors naming the key and the accepted ones)."""
    if not text:
        return DebugCmd()
    keys = []
    for part in str(text).split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        keys.append((k.lower(), v if sep else None))
    accepted = ", ".join(KEYS)
    for k, v in keys:
        if k in UNSUPPORTED:
            raise QsensError(f"--debug_cmd key {k!r} ({UNSUPPORTED[k]}) is a TPU-MLIR option qsens does not model; "
                             f"accepted keys: {accepted}")
        if k not in KEYS:
            raise QsensError(f"--debug_cmd key {k!r} is unknown; accepted keys: {accepted} (syntax 'k1;k2=v')")
        if k == "tune_steps":
            if v is None or not v.strip().isdigit() or int(v) < 1:
                raise QsensError(f"--debug_cmd tune_steps needs a whole number >= 1 (tune_steps=21), got {v!r}")
        elif v is not None:
            raise QsensError(f"--debug_cmd key {k!r} takes no value, got {k}={v}")
    return DebugCmd(tuple(keys))


def histogram_bin_num(value) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 2:
        raise QsensError(f"--histogram_bin_num must be a whole number >= 2 (TPU-MLIR's default {DEFAULT_BINS}), "
                         f"got {value!r}")
    return n


def tune_files(tune_list: str | None, tune_num: int) -> list[str] | None:
    """The SimpleTuner's samples of ``--tune_list`` (TPU-MLIR's ``DataSelector(None, tune_num, tune_list)``)."""
    if not tune_list:
        return None
    from ..data.dataset import select_files

    if not os.path.isfile(tune_list):
        raise QsensError(f"--tune_list '{tune_list}' does not exist; pass a file with one sample path per line")
    return list(select_files(dataset=None, data_list=tune_list, input_num=max(int(tune_num), 0)))


def resolve_fp_type(chip: str, fp_type: str) -> str:
    """``--fp_type`` on ``chip``: the float type of the float layers (F32), or a one-line error."""
    try:  # the chip layer's rule when it has one (BM1684X etc.)
        from ..quant.chip import resolve_fp_type as chip_rule
    except ImportError:
        chip_rule = None
    want = str(fp_type).upper()
    if want not in ("AUTO", "F16", "BF16", "F32"):
        raise QsensError(f"--fp_type must be auto, F16, BF16 or F32, got {fp_type!r}")
    if chip_rule is not None:
        return chip_rule(chip, fp_type)
    if want in ("AUTO", "F32"):
        return "F32"
    raise QsensError(f"--fp_type {fp_type}: {chip} mixes INT8 with F32 only (TPU-MLIR's chip_support_mix_fp_type); "
                     "use auto or F32")


def calibration_flags(o, cali_method: str, files=None) -> tuple[str, dict]:
    """``(method, calibrate kwargs)`` from an options object / namespace with TPU-MLIR's ``debug_cmd``,
    ``histogram_bin_num``, ``tune_list`` and ``tune_num``: the method ``--debug_cmd`` picks and ``tune_num``,
    ``n_bins``, ``tune_files``, ``tune_steps`` for :func:`qsens.calibrate.calibrate`.  ``dump_list`` writes
    TPU-MLIR's ``selected_image_list.txt`` (and ``selected_tune_image_list.txt``) into the working directory."""
    dbg = parse_debug_cmd(getattr(o, "debug_cmd", None))
    bins = histogram_bin_num(getattr(o, "histogram_bin_num", DEFAULT_BINS))
    tune_num = 0 if dbg.skips_tuning else o.tune_num
    tfiles = tune_files(getattr(o, "tune_list", None), o.tune_num)
    if tfiles is not None and not dbg.skips_tuning:
        tune_num = len(tfiles)
    if "dump_list" in dbg:
        for name, fl in (("selected_image_list.txt", files), ("selected_tune_image_list.txt", tfiles)):
            if fl is not None:
                with open(name, "w") as f:
                    f.writelines(f"{x}\n" for x in fl)
    return dbg.method(cali_method), {"tune_num": tune_num, "n_bins": bins, "tune_files": tfiles,
                                     "tune_steps": dbg.tune_steps}
