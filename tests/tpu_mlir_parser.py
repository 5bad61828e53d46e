"""Independent, test-only re-implementation of TPU-MLIR's table readers (does NOT import qsens).

Written from the spec (tpu-mlir-semantics.md §1.2, §1.4) so that qsens's writer is checked against a
second reader, not against itself:

* :func:`python_parse` — ``CalibrationTable.parse`` (python/calibration/utils.py): strip each line,
  skip empty, ``#`` lines are headers, stop at ``#asym_op`` / ``#int4_th``, split on ONE space, exactly
  four fields else ``RuntimeError``.
* :func:`cpp_import` — ``ImportCalibrationTablePass`` (newest version): drop a trailing ``\\r``; ``#`` lines
  may switch block (``#weight_scale`` -> 1, ``#int4_th`` -> 2, ``#tpu-mlir-fp8`` -> 3, ``mqbench-fp8`` -> 4,
  ``asym_op`` -> 5, ``int4_op`` -> 6, otherwise back to the int8 block); in a threshold block only lines
  that ``std::regex_match`` ``\\S+\\s+[-0-9.e]+\\s+[-0-9.e]+\\s+[-0-9.e]+`` are read, others are skipped.
* :func:`cpp_qtable` — ``ConvertTopToTpu::init_qtable``: skip ``^\\s*$`` and ``#.*``; ``\\S+\\s+\\S+`` is an
  entry (mode upper-cased); a lone ``\\S+`` is ignored; anything else is an error.
"""

import re

CALI = re.compile(r"\S+\s+[-0-9.e]+\s+[-0-9.e]+\s+[-0-9.e]+")
INFO = re.compile(r"#.*")


def python_parse(path):
    """Return ``(headers, {name: [th, min, max]})`` like TPU-MLIR's Python ``CalibrationTable``."""
    thresholds_map = dict()
    headers = []
    with open(path) as f:
        for line in f.readlines():
            line = line.strip()
            if len(line) == 0:
                continue
            if line.startswith("#"):
                if line.startswith("#asym_op") or line.startswith("#int4_th"):
                    break
                headers.append(line)
                continue
            fields = line.split(" ")
            if len(fields) != 4:
                raise RuntimeError(f"Error with parse {line} in {path}")
            op_name, threshold, _min, _max = fields
            thresholds_map[op_name] = [float(threshold), float(_min), float(_max)]
    return headers, thresholds_map


def _block_type(line):
    if not INFO.fullmatch(line):
        return 0
    if "#weight_scale" in line or "#weight_scale_fp8" in line:
        return 1
    if "#int4_th" in line:
        return 2
    if "#tpu-mlir-fp8" in line:
        return 3
    if "mqbench-fp8" in line:
        return 4
    if "asym_op" in line:
        return 5
    if "int4_op" in line:
        return 6
    return 0


def _istream_double(tok):
    # iss >> double: accept what strtod would; the regex already restricted the characters
    return float(tok)


def cpp_import(path):
    """Return dict with keys int8, int4, fp8 ({name: (th, min, max)}), asym_ops, int4_ops, weight_scales."""
    out = {"int8": {}, "int4": {}, "fp8": {}, "asym_ops": [], "int4_ops": [], "weight_scales": {}}
    block = 0  # 0 = int8 thresholds
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # std::getline does not yield an empty last line after a final '\n'
    for line in lines:
        if line.endswith("\r"):
            line = line[:-1]
        bt = _block_type(line)
        if bt != 0:
            block = bt
            continue
        # block_type 0 (data or a plain '#' comment) is processed in the current block
        toks = line.split()
        if block in (0, 2, 3, 4):
            if CALI.fullmatch(line):
                name, th, mi, ma = toks[0], *map(_istream_double, toks[1:4])
                key = {0: "int8", 2: "int4", 3: "fp8", 4: "fp8"}[block]
                out[key][name] = (th, mi, ma)
        elif block == 1:
            name = toks[0] if toks else ""
            num = int(toks[1]) if len(toks) > 1 else 0
            out["weight_scales"][name] = [float(v) for v in toks[2 : 2 + num]]
        elif block == 5:
            if not toks:
                raise RuntimeError("not match required format: " + line)
            out["asym_ops"].append(toks[0])
        elif block == 6:
            if not toks:
                raise RuntimeError("not match required format: " + line)
            out["int4_ops"].append(toks[0])
    return out


def cpp_qtable(path):
    """Return ``{name: MODE}`` like the C++ lowering pass reads a quantize table."""
    q = {}
    with open(path, newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        if line.endswith("\r"):
            line = line[:-1]
        if re.fullmatch(r"^\s*$", line):
            continue
        if INFO.fullmatch(line):
            continue
        if re.fullmatch(r"\S+\s+\S+", line):
            name, mode = line.split()
            q[name] = mode.upper()
            continue
        if re.fullmatch(r"\S+", line):
            continue
        raise RuntimeError("Error, quantize file in [" + line + "]")
    return q
