"""TPU-MLIR calibration tables and quantize tables (qtables), byte-compatible.

Calibration table (``run_calibration.py`` output, consumed by ``tpuc-opt --import-calibration-table``)::

    # mlir version: <v> cali version 1.0
    # mlir: <mlir path>
    # genetated time: <datetime>                      (sic "genetated", as TPU-MLIR writes it)
    # quantization threshold calculation method: <method>
    # histogram number: <bins>
    # sample number: <N>
    ###
    # tune number: <T>
    ###
    # op_name    threshold    min    max
    <tensor> <th %.7f> <min %.7f> <max %.7f>
    ...
                                                     (optional: blank line, ``#int4_th``, int4 entries)
                                                     (optional: blank line, ``#asym_op``, op names)

Parse rules are TPU-MLIR's ``CalibrationTable.parse`` (python/calibration/utils.py): each line is
stripped; blank lines are skipped; ``#`` lines are kept as headers, but the main section stops at
``#int4_th`` / ``#asym_op``; any other line is split on a single space and must have exactly four fields.
qsens is stricter in one way: a value must also match the C++ importer's ``[-0-9.e]+`` (so ``nan``,
``inf`` or ``1E-5`` are rejected here instead of being silently dropped by ``tpuc-opt``).

The generated-time header honours ``SOURCE_DATE_EPOCH`` (UTC), so two runs can produce identical bytes.

Quantize table (``run_sensitive_layer.py -o qtable``, consumed by ``model_deploy.py --quantize_table``)::

    # genetated time: <datetime>
    # sample number: <N>
    # chip: bm1684  mix_mode: F32
    # number of F32 layer: <K>
    ###
    # op_name   quantize_mode
    <op_name> <MODE>

Parse rules are the C++ lowering pass's (``ConvertTopToTpu::init_qtable``): blank lines and lines
starting with ``#`` are skipped, ``\\S+\\s+\\S+`` lines are entries, a lone name is ignored (with a
warning here), anything else is an error; the mode is case-insensitive.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import types
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from qsens.errors import NumericsError, TableError

__all__ = [
    "CaliEntry",
    "CaliTable",
    "QTable",
    "QUANT_MODES",
    "check_table_matches",
    "dump_cali_table",
    "dump_qtable",
    "generated_time",
    "read_cali_table",
    "read_qtable",
    "update_threshold",
    "write_cali_table",
    "write_qtable",
]

#: Line regex of TPU-MLIR's C++ calibration importer (ImportCalibrationTable.cpp).
CPP_CALI_LINE = re.compile(r"\S+\s+[-0-9.e]+\s+[-0-9.e]+\s+[-0-9.e]+")
_CPP_NUMBER = re.compile(r"[-0-9.e]+")
_QTABLE_ENTRY = re.compile(r"\S+\s+\S+")
_QTABLE_NAME = re.compile(r"\S+")

#: Quantize modes TPU-MLIR's ``module::symbolizeMode`` knows (qtables are upper-cased before lookup).
QUANT_MODES = frozenset(
    {
        "INT8",
        "UINT8",
        "INT4",
        "BF16",
        "F16",
        "F32",
        "W8F16",
        "W8BF16",
        "W4F16",
        "W4BF16",
        "W4INT8",
        "F8",
        "F8E4M3",
        "F8E5M2",
    }
)

#: Float modes allowed in a mixed model per chip (``chip_support_mix_fp_type``; BM1684 has no F16/BF16).
CHIP_MIX_MODES = {
    "bm1684": ("F32",),
    "bm1684x": ("F16", "F32"),
    "bm1688": ("F16", "F32"),
    "cv186x": ("F16", "F32"),
    "cv183x": ("BF16",),
    "cv182x": ("BF16",),
    "cv181x": ("BF16",),
    "cv180x": ("BF16",),
}

_VERSION_STYLES = ("kld-new", "kld-mid", "kld-old")


class CaliEntry(NamedTuple):
    """One calibration-table line: symmetric threshold and the raw (signed) activation min / max."""

    threshold: float
    min: float
    max: float


def _freeze(entries: Mapping[str, Iterable[float]] | Iterable[tuple[str, Iterable[float]]]):
    items = entries.items() if isinstance(entries, Mapping) else entries
    out: dict[str, CaliEntry] = {}
    for name, vals in items:
        out[str(name)] = CaliEntry(*(float(v) for v in vals))
    return types.MappingProxyType(out)


@dataclass(frozen=True, eq=True)
class CaliTable:
    """An immutable calibration table.

    ``entries`` is an ordered read-only mapping ``tensor name -> CaliEntry(threshold, min, max)``
    (the main int8 section, in file order). ``headers`` are the raw ``#`` lines of the main section
    as TPU-MLIR keeps them (stripped, without newline). ``int4`` (the ``#int4_th`` section) and
    ``asym_ops`` (the ``#asym_op`` section) are preserved when present so a re-dump keeps them.
    """

    entries: Mapping[str, CaliEntry]
    headers: tuple[str, ...] = ()
    int4: Mapping[str, CaliEntry] = field(default_factory=lambda: types.MappingProxyType({}))
    asym_ops: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "entries", _freeze(self.entries))
        object.__setattr__(self, "int4", _freeze(self.int4))
        object.__setattr__(self, "headers", tuple(str(h) for h in self.headers))
        object.__setattr__(self, "asym_ops", tuple(str(a) for a in self.asym_ops))

    __hash__ = None  # mappings are not hashable

    # Convenience views -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> CaliEntry:
        return self.entries[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def threshold(self, name: str) -> float:
        return self.entries[name].threshold

    def thresholds(self) -> dict[str, float]:
        """``{name: threshold}`` in table order."""
        return {k: v.threshold for k, v in self.entries.items()}


@dataclass(frozen=True)
class QTable:
    """An immutable quantize table: ordered ``(op_name, MODE)`` pairs plus the raw ``#`` header lines."""

    ops: tuple[tuple[str, str], ...]
    headers: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple((str(n), str(m).upper()) for n, m in self.ops))
        object.__setattr__(self, "headers", tuple(str(h) for h in self.headers))

    def as_dict(self) -> dict[str, str]:
        return dict(self.ops)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.ops)


# ------------------------------------------------------------------------------------------------
# Time header
# ------------------------------------------------------------------------------------------------
def generated_time() -> str:
    """``str(datetime.now())`` as TPU-MLIR writes it, or the UTC time of ``SOURCE_DATE_EPOCH`` if set.

    ``SOURCE_DATE_EPOCH`` (reproducible-builds convention, integer seconds) makes outputs byte-identical
    across runs; the value is rendered like ``str(datetime)`` without timezone suffix.
    """
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde is not None and sde.strip() != "":
        try:
            secs = int(sde.strip())
        except ValueError as e:
            raise TableError(
                f"SOURCE_DATE_EPOCH={sde!r} is not an integer number of seconds; set it to e.g. "
                f"`date +%s` or unset it"
            ) from e
        t = _dt.datetime.fromtimestamp(secs, tz=_dt.UTC).replace(tzinfo=None)
        return str(t)
    return str(_dt.datetime.now())


# ------------------------------------------------------------------------------------------------
# Calibration table
# ------------------------------------------------------------------------------------------------
def _read_lines(path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except FileNotFoundError as e:
        raise TableError(f"{path}: table file not found; check the path") from e
    except IsADirectoryError as e:
        raise TableError(f"{path}: is a directory, expected a table file") from e
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: not a text file (UTF-8 decode failed); pass a TPU-MLIR table") from e


def _parse_value(text: str, path, lineno: int, line: str) -> float:
    if not _CPP_NUMBER.fullmatch(text):
        raise TableError(
            f"{path}:{lineno}: value {text!r} in line {line!r} is not a plain decimal number "
            f"([-0-9.e]+, what tpuc-opt accepts); write it with %.7f"
        )
    try:
        return float(text)
    except ValueError as e:
        raise TableError(
            f"{path}:{lineno}: value {text!r} in line {line!r} is not a number; "
            f"expected 'op_name threshold min max'"
        ) from e


def _parse_entry(line: str, path, lineno: int) -> tuple[str, CaliEntry]:
    fields = line.split(" ")
    if len(fields) != 4:
        raise TableError(
            f"{path}:{lineno}: expected 4 fields 'op_name threshold min max' separated by single "
            f"spaces, got {len(fields)} in line {line!r}"
        )
    name, th, mi, ma = fields
    return name, CaliEntry(*(_parse_value(v, path, lineno, line) for v in (th, mi, ma)))


def read_cali_table(path) -> CaliTable:
    """Parse a TPU-MLIR calibration table (rules of ``CalibrationTable.parse``; see module doc).

    Raises :class:`TableError` naming the file and line number on a malformed line or duplicate name.
    """
    entries: dict[str, CaliEntry] = {}
    int4: dict[str, CaliEntry] = {}
    asym: list[str] = []
    headers: list[str] = []
    section = "main"
    for lineno, raw in enumerate(_read_lines(path), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("#int4_th"):
                section = "int4"
            elif line.startswith("#asym_op"):
                section = "asym"
            elif section == "main":
                headers.append(line)
            # '#' lines inside the int4/asym sections are comments
            continue
        if section == "asym":
            if len(line.split()) != 1:
                raise TableError(f"{path}:{lineno}: expected one op name per line in #asym_op, got {line!r}")
            asym.append(line)
            continue
        name, entry = _parse_entry(line, path, lineno)
        target = entries if section == "main" else int4
        if name in target:
            raise TableError(
                f"{path}:{lineno}: tensor {name!r} appears twice"
                f"{' in #int4_th' if section == 'int4' else ''}; keep one line per tensor"
            )
        target[name] = entry
    return CaliTable(entries=entries, headers=tuple(headers), int4=int4, asym_ops=tuple(asym))


def _check_writable(name: str, vals: Sequence[float], path) -> None:
    if not name or any(c.isspace() for c in name) or name.startswith("#"):
        raise TableError(
            f"{path}: tensor name {name!r} cannot be written to a calibration table "
            f"(empty, contains whitespace or starts with '#'); rename the tensor in the model"
        )
    for v in vals:
        if not math.isfinite(v):
            raise NumericsError(
                f"{path}: tensor {name!r} has a non-finite threshold/min/max {tuple(vals)}; "
                f"check the calibration data for NaN/Inf activations"
            )


def _entry_line(name: str, vals: Sequence[float]) -> str:
    return "{} {:.7f} {:.7f} {:.7f}\n".format(name, *vals)


def _body_lines(table: CaliTable, path) -> list[str]:
    out = []
    for name, e in table.entries.items():
        _check_writable(name, e, path)
        out.append(_entry_line(name, e))
    if table.int4:
        out.append("\n")
        out.append("#int4_th\n")
        for name, e in table.int4.items():
            _check_writable(name, e, path)
            out.append(_entry_line(name, e))
    if table.asym_ops:
        out.append("\n")
        out.append("#asym_op\n")
        out.extend(f"{op}\n" for op in table.asym_ops)
    return out


def _write_text(path, lines: Iterable[str]) -> None:
    """Atomic: a temp file in the same directory, then a rename (an interrupted write never looks complete)."""
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(lines))
    os.replace(tmp, path)


def cali_header_lines(
    *,
    method: str,
    mlir: str,
    histogram_bins: int,
    sample_number: int,
    tune_number: int | None = None,
    version_style: str = "kld-new",
    mlir_version: str | None = None,
    time: str | None = None,
) -> list[str]:
    """The header lines (without newline) TPU-MLIR's calibrator writes, for the given version style.

    * ``kld-new`` (current ``dump_cali_table``): mlir version (``... cali version 1.0``), mlir,
      time, method, histogram number, sample number + ``###``, tune number + ``###`` (``tune_number``
      None writes 0), column line.
    * ``kld-mid``: mlir version, mlir, time, histogram number, sample number, [tune number], ``###``,
      column line (no method line).
    * ``kld-old``: time, histogram number, sample number, [tune number], ``###``, column line.

    TPU-MLIR 1.23 (checked with the real tool): ``run_calibration`` writes ``kld-mid`` with the tune number for
    every method; ``run_sensitive_layer``'s per-method tables are ``kld-old`` (``_tune`` with the tune number).
    """
    if version_style not in _VERSION_STYLES:
        raise ValueError(f"version_style must be one of {_VERSION_STYLES}, got {version_style!r}")
    t = generated_time() if time is None else time
    ver = mlir_version if mlir_version is not None else _default_version()
    col = "# op_name    threshold    min    max"
    if version_style == "kld-new":
        return [
            f"# mlir version: {ver} cali version 1.0",
            f"# mlir: {mlir}",
            f"# genetated time: {t}",
            f"# quantization threshold calculation method: {method}",
            f"# histogram number: {histogram_bins}",
            f"# sample number: {sample_number}",
            "###",
            f"# tune number: {0 if tune_number is None else tune_number}",
            "###",
            col,
        ]
    if version_style == "kld-mid":
        lines = [
            f"# mlir version: {ver}",
            f"# mlir: {mlir}",
            f"# genetated time: {t}",
            f"# histogram number: {histogram_bins}",
            f"# sample number: {sample_number}",
        ]
        if tune_number is not None:
            lines.append(f"# tune number: {tune_number}")
        return lines + ["###", col]
    return [
        f"# genetated time: {t}",
        f"# histogram number: {histogram_bins}",
        f"# sample number: {sample_number}",
        *([f"# tune number: {tune_number}"] if tune_number is not None else []),
        "###",
        col,
    ]


def _default_version() -> str:
    try:
        from importlib.metadata import version

        return f"qsens-{version('qsens')}"
    except Exception:  # not installed (running from a checkout)
        return "qsens"


def write_cali_table(
    path,
    table: CaliTable | Mapping[str, Sequence[float]],
    *,
    method: str,
    mlir: str,
    histogram_bins: int,
    sample_number: int,
    tune_number: int | None = None,
    version_style: str = "kld-new",
    mlir_version: str | None = None,
) -> CaliTable:
    """Write ``table`` with a fresh TPU-MLIR header (see :func:`cali_header_lines`); values ``%.7f``.

    ``table`` may be a :class:`CaliTable` (its int4/asym sections are kept, its headers replaced) or a
    mapping ``name -> (threshold, min, max)``. Returns the table as it would be read back (headers set,
    values still full precision). Non-finite values raise :class:`NumericsError` (tpuc-opt would
    silently skip the line).
    """
    if not isinstance(table, CaliTable):
        table = CaliTable(entries=table)
    headers = cali_header_lines(
        method=method,
        mlir=mlir,
        histogram_bins=histogram_bins,
        sample_number=sample_number,
        tune_number=tune_number,
        version_style=version_style,
        mlir_version=mlir_version,
    )
    table = CaliTable(entries=table.entries, headers=tuple(headers), int4=table.int4, asym_ops=table.asym_ops)
    dump_cali_table(path, table)
    return table


def dump_cali_table(path, table: CaliTable) -> None:
    """Re-dump ``table`` with its raw header lines verbatim (TPU-MLIR ``CalibrationTable.dump``).

    This is how ``new_cali_table.txt`` is produced: headers copied, every entry ``%.7f``.
    """
    _write_text(path, [h + "\n" for h in table.headers] + _body_lines(table, path))


def update_threshold(table: CaliTable, name: str, th: float) -> CaliTable:
    """A new table with ``name``'s threshold replaced by ``th`` (min/max kept; ``update_to`` semantics)."""
    if name not in table.entries:
        raise TableError(f"tensor {name!r} is not in the calibration table; cannot update its threshold")
    entries = dict(table.entries)
    old = entries[name]
    entries[name] = CaliEntry(float(th), old.min, old.max)
    return CaliTable(entries=entries, headers=table.headers, int4=table.int4, asym_ops=table.asym_ops)


def check_table_matches(table: CaliTable, tensor_names: Iterable[str], path=None, *, show: int = 5) -> None:
    """Raise :class:`TableError` unless ``table`` has exactly the tensors ``tensor_names``.

    The message lists the first ``show`` missing (in the model, absent from the table) and unknown
    (in the table, absent from the model) names with their counts.
    """
    want = list(dict.fromkeys(tensor_names))
    want_set = set(want)
    missing = [n for n in want if n not in table.entries]
    unknown = [n for n in table.entries if n not in want_set]
    if not missing and not unknown:
        return

    def fmt(names: list[str]) -> str:
        head = ", ".join(names[:show])
        more = f", ... (+{len(names) - show} more)" if len(names) > show else ""
        return f"{len(names)} [{head}{more}]"

    parts = []
    if missing:
        parts.append(f"missing from the table: {fmt(missing)}")
    if unknown:
        parts.append(f"not in the model: {fmt(unknown)}")
    where = f"{path}: " if path is not None else ""
    raise TableError(
        f"{where}calibration table does not match the model; {'; '.join(parts)}; "
        f"regenerate the table for this model (qsens calibrate) or pass the right --calibration_table"
    )


# ------------------------------------------------------------------------------------------------
# Quantize table
# ------------------------------------------------------------------------------------------------
def qtable_header_lines(
    *, sample_number: int | None, chip: str, mix_mode: str, count: int, time: str | None = None
) -> list[str]:
    """Header of ``print_log_info`` (SL/MP); ``sample_number=None`` omits that line (SQ ``gen_qtable``)."""
    t = generated_time() if time is None else time
    lines = [f"# genetated time: {t}"]
    if sample_number is not None:
        lines.append(f"# sample number: {sample_number}")
    lines += [
        f"# chip: {chip}  mix_mode: {mix_mode}",
        f"# number of {mix_mode} layer: {count}",
        "###",
        "# op_name   quantize_mode",
    ]
    return lines


def _check_qtable_ops(ops: Sequence[tuple[str, str]], path) -> list[tuple[str, str]]:
    out = []
    seen = set()
    for name, mode in ops:
        name, mode = str(name), str(mode).upper()
        if not name or any(c.isspace() for c in name) or name.startswith("#"):
            raise TableError(
                f"{path}: op name {name!r} cannot be written to a qtable (empty, whitespace or '#')"
            )
        if mode not in QUANT_MODES:
            raise TableError(
                f"{path}: unknown quantize mode {mode!r} for {name!r}; use one of {sorted(QUANT_MODES)}"
            )
        if name in seen:
            raise TableError(f"{path}: op {name!r} listed twice; keep one line per op")
        seen.add(name)
        out.append((name, mode))
    return out


def write_qtable(
    path,
    ops: Sequence[tuple[str, str]],
    *,
    sample_number: int | None,
    chip: str = "bm1684",
    mix_mode: str = "F32",
) -> QTable:
    """Write a qtable exactly as ``run_sensitive_layer.py`` does (header of §1.4, ``<op> <MODE>`` lines).

    ``# number of <mix_mode> layer: K`` counts the ops whose mode is ``mix_mode``. For chips TPU-MLIR
    knows, ``mix_mode`` must be one it allows (BM1684: F32 only).
    """
    mix_mode = mix_mode.upper()
    allowed = CHIP_MIX_MODES.get(chip.lower())
    if allowed is not None and mix_mode not in allowed:
        raise TableError(
            f"{path}: mix_mode {mix_mode} is not supported by {chip} (allowed: {', '.join(allowed)}); "
            f"use mix_mode='{allowed[0]}'"
        )
    checked = _check_qtable_ops(ops, path)
    count = sum(1 for _, m in checked if m == mix_mode)
    headers = qtable_header_lines(sample_number=sample_number, chip=chip, mix_mode=mix_mode, count=count)
    q = QTable(ops=tuple(checked), headers=tuple(headers))
    dump_qtable(path, q)
    return q


def dump_qtable(path, qtable: QTable) -> None:
    """Re-dump a qtable with its raw header lines verbatim."""
    checked = _check_qtable_ops(qtable.ops, path)
    _write_text(path, [h + "\n" for h in qtable.headers] + [f"{n} {m}\n" for n, m in checked])


def read_qtable(path) -> QTable:
    """Parse a qtable with the C++ lowering pass's rules (see module doc); modes are upper-cased.

    ``#`` lines before the first entry are kept as headers. Raises :class:`TableError` naming the file
    and line on a line tpuc-opt would reject, an unknown mode, or a duplicate op.
    """
    ops: list[tuple[str, str]] = []
    headers: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(_read_lines(path), start=1):
        line = raw.rstrip("\n")
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip() == "":
            continue
        if line.startswith("#"):
            if not ops:
                headers.append(line)
            continue
        if _QTABLE_ENTRY.fullmatch(line):
            name, mode = line.split()
            mode_u = mode.upper()
            if mode_u not in QUANT_MODES:
                raise TableError(
                    f"{path}:{lineno}: unknown quantize mode {mode!r} for {name!r}; "
                    f"use one of {sorted(QUANT_MODES)}"
                )
            if name in seen:
                raise TableError(f"{path}:{lineno}: op {name!r} already listed on line {seen[name]}")
            seen[name] = lineno
            ops.append((name, mode_u))
            continue
        if _QTABLE_NAME.fullmatch(line):
            warnings.warn(
                f"{path}:{lineno}: line {line!r} has no quantize mode; tpuc-opt ignores it", stacklevel=2
            )
            continue
        raise TableError(
            f"{path}:{lineno}: expected '<op_name> <MODE>' (one space-separated pair, no leading/trailing "
            f"blanks), got {line!r}"
        )
    return QTable(ops=tuple(ops), headers=tuple(headers))


def quantize_table_lines(custom: Sequence[tuple[str, str]], *, sample_number: int, chip: str = "bm1684",
                         time: str | None = None) -> list[str]:
    """TPU-MLIR 1.30.2's ``QuantizeTable.dump`` (``calibration/utils.py``), the qtable of ``run_calibration.py
    --search``: no shape or pattern layers here (none on the CNNs qsens supports), ``custom`` in append order
    (duplicates kept), ``total layers`` counting unique names; the ``# # part_quant_mode: None`` line is
    TPU-MLIR's (``None != 'None'``)."""
    t = generated_time() if time is None else time
    return [f"# generated time: {t}", f"# sample number: {sample_number}", f"# chip: {chip}",
            f"# total layers: {len(dict.fromkeys(n for n, _ in custom))} (unique list blow)",
            "# number of shape layers: 0", "# number of pattern layers: 0",
            f"# number of custom layers: {len(custom)}", "# # part_quant_mode: None", "###",
            "# op_name   quantize_mode", "# pattern layers", "# shape layers", "# custom layers",
            *[f"{n} {m}" for n, m in custom]]


def write_quantize_table(path, custom: Sequence[tuple[str, str]], *, sample_number: int, chip: str = "bm1684") -> None:
    _write_text(path, [ln + "\n" for ln in quantize_table_lines(custom, sample_number=sample_number, chip=chip)])
