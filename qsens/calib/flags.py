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
* ``--debug_cmd`` on ``qsens search`` (``run_sensitive_layer.py``, 1.23 ``calibration/sensitive_layer.py``): every
  method's SimpleTuner is built from the user's ``args`` (``SimpleTuner.__init__`` parses ``args.debug_cmd``), so
  ``tune_steps=N`` sets the tuner's grid of all three candidate tables (and of the base table qsens calibrates when no
  ``--calibration_table`` is given, as if that ``run_calibration`` had the same flag).  The MAX / Percentile9999
  calibrators get ``debug_cmd`` overwritten with ``'use_max'`` / ``'use_percentile9999'``; only the KL calibrator
  keeps the user's keys, so ``use_max`` / ``use_percentile9999`` there silently turn the *KL* candidate into a
  second MAX / Percentile table (``use_mse`` is ignored by the v1 statistics).  qsens refuses the three with a
  one-line error pointing at ``--methods`` (decision: the duplicate is a trap, not a feature).  ``MixPrecSearcher``
  reads ``debug_log``, ``max_sampling=N``, ``dump_tensor_diff_by_html`` and ``visual_tensor=NAMES`` (logging and
  plots only): accepted, no numeric effect.
* ``--debug_cmd`` on ``qsens qtable`` (``run_qtable.py``): only ``MixPrecSearcher``'s keys above (no effect), and
  ``run_bias_correction`` (a different search mode of run_qtable, not modelled: refused).  Calibration keys have no
  effect in a tool that calibrates nothing and are refused with a pointer to ``qsens calibrate``.
* ``--debug_cmd`` on ``qsens calibrate --search`` (1.30.2 ``run_calibration.py --search``: ``args.debug_cmd`` reaches
  every ``ActivationCalibrator`` the searches build, ``calibration/search_qtable.py`` / ``search_threshold.py``):
  ``tune_steps=N`` sets every tuner's grid (checked: ``search_threshold_tune_steps5`` / ``search_qtable_tune_steps5``
  fixtures); ``debug_log``, ``print_debug_info``, ``dump_list`` change no number; ``use_*`` are refused (each search
  sets the calibrator's methods itself, so they pick nothing).
* ``--fp_type auto|F16|BF16|F32``: the float type of float layers; ``auto`` is the chip's (``FLOAT_MAP``: BM1684 F32,
  BM1684X F16), and a type outside ``chip_support_mix_fp_type`` (BM1684: F32 only; BM1684X: F16, F32) is an error.
"""

from __future__ import annotations

import dataclasses
import os

from ..errors import QsensError

DEFAULT_BINS = 2048
DEFAULT_TUNE_STEPS = 21
#: keys qsens implements (no value) or accepts without a numeric effect
KEYS = ("use_max", "use_percentile9999", "use_mse", "tune_steps", "debug_log", "print_debug_info", "dump_list")
#: MixPrecSearcher's keys (run_sensitive_layer / run_qtable): logging and plots, no numeric effect (name -> takes a value)
SEARCHER_KEYS = {"debug_log": False, "max_sampling": True, "dump_tensor_diff_by_html": False, "visual_tensor": True}
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


#: --debug_cmd keys of search that would change the KL candidate table into another method's (see the module doc)
_KL_OVERRIDES = ("use_max", "use_percentile9999", "use_mse")


def parse_debug_cmd(text: str | None, tool: str = "calibrate") -> DebugCmd:
    """TPU-MLIR's ``parse_debug_cmd``, then qsens's checks for ``tool`` (``calibrate``, ``search`` or ``qtable``):
    one-line errors naming the key and the accepted ones."""
    if not text:
        return DebugCmd()
    keys = []
    for part in str(text).split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        keys.append((k.lower(), v if sep else None))
    if tool == "calibrate":
        return _check_keys(keys, KEYS, {}, tool)
    if tool == "calisearch":
        # run_calibration.py --search (TPU-MLIR 1.30.2): args.debug_cmd reaches every ActivationCalibrator the search
        # builds (tune_steps: each SimpleTuner's grid), but each search sets the calibrator's methods itself
        # (search_qtable: --quantize_method_list; search_threshold: all four), so use_* picks nothing there
        for k, _ in keys:
            if k in _KL_OVERRIDES:
                raise QsensError(f"--debug_cmd {k} with calibrate --search: the search sets its calibration methods "
                                 "itself (TPU-MLIR 1.30.2); choose them with --quantize_method_list")
        return _check_keys(keys, ("tune_steps", "print_debug_info", "debug_log", "dump_list"), {}, "calibrate --search")
    if tool not in ("search", "qtable"):
        raise ValueError(f"parse_debug_cmd: unknown tool {tool!r}")
    for k, _ in keys:
        if tool == "search" and k in _KL_OVERRIDES:
            effect = ("is ignored by its v1 statistics (no effect)" if k == "use_mse" else
                      f"would compute its KL candidate table with {k[4:]} instead (a duplicate candidate)")
            raise QsensError(f"--debug_cmd {k} on search: run_sensitive_layer {effect}; choose the candidates with "
                             "--methods")
        if tool == "qtable" and k == "run_bias_correction":
            raise QsensError("--debug_cmd run_bias_correction (run_qtable's bias-correction mode) is not modelled by "
                             "qsens; for TPU-MLIR's calibration bias correction use `qsens calibrate --bc`")
        if tool == "qtable" and k in KEYS and k not in SEARCHER_KEYS:
            raise QsensError(f"--debug_cmd key {k!r} has no effect on run_qtable (it calibrates nothing); pass it to "
                             f"`qsens calibrate`; accepted keys here: {', '.join(SEARCHER_KEYS)}")
    allowed = ("tune_steps", "print_debug_info") if tool == "search" else ()
    return _check_keys(keys, allowed, SEARCHER_KEYS, tool)


def _check_keys(keys: list, allowed: tuple, searcher: dict, tool: str) -> DebugCmd:
    accepted = ", ".join((*allowed, *searcher))
    for k, v in keys:
        if k in searcher:
            if searcher[k] and not v:
                raise QsensError(f"--debug_cmd key {k!r} needs a value ({k}=...)")
            if not searcher[k] and v is not None:
                raise QsensError(f"--debug_cmd key {k!r} takes no value, got {k}={v}")
            continue
        if k in UNSUPPORTED:
            raise QsensError(f"--debug_cmd key {k!r} ({UNSUPPORTED[k]}) is a TPU-MLIR option qsens does not model; "
                             f"accepted keys: {accepted}")
        if k in KEYS and k not in allowed:
            raise QsensError(f"--debug_cmd key {k!r} is a run_calibration key that {tool} does not take; accepted keys "
                             f"here: {accepted}")
        if k not in allowed:
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
    """``--fp_type`` on ``chip``: the float type of the float layers, or a one-line error (a misspelt type named
    here, a type the chip does not mix by :func:`qsens.quant.chip.resolve_fp_type`)."""
    from ..quant.chip import resolve_fp_type as chip_rule

    if str(fp_type).upper() not in ("AUTO", "F16", "BF16", "F32"):
        raise QsensError(f"--fp_type must be auto, F16, BF16 or F32, got {fp_type!r}")
    return chip_rule(chip, fp_type)


def calibration_flags(o, cali_method: str, files=None, tool: str = "calibrate") -> tuple[str, dict]:
    """``(method, calibrate kwargs)`` from an options object / namespace with TPU-MLIR's ``debug_cmd``,
    ``histogram_bin_num``, ``tune_list`` and ``tune_num``: the method ``--debug_cmd`` picks and ``tune_num``,
    ``n_bins``, ``tune_files``, ``tune_steps`` for :func:`qsens.calibrate.calibrate`.  ``dump_list`` writes
    TPU-MLIR's ``selected_image_list.txt`` (and ``selected_tune_image_list.txt``) into the working directory."""
    dbg = parse_debug_cmd(getattr(o, "debug_cmd", None), tool)
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
