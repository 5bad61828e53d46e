"""The op names of a user's TPU-MLIR model: read a Top-dialect ``.mlir`` (``model_transform.py --mlir``) and map
qsens's canonical op names onto them.

TPU-MLIR reads an op's name from its MLIR location (``utils/mlir_parser.py``, ``Operation.name`` /
``Operation.outputs``, TPU-MLIR 1.23):

* the name is the first quoted string of the op's location; the location is usually an alias ``loc(#loc12)``
  defined at the end of the file (``#loc12 = loc("conv1_Conv")``), and aliases may refer to other aliases
  (``#loc20 = loc(fused[#loc18, #loc19])``);
* an op with several results whose location is ``fused[...]`` is named by the whole ``fused["a", "b"]`` text;
  its output tensors are the quoted strings in order (``Operation.outputs``);
* ``top.Weight``, ``top.None`` and ``func.return`` are not ops of the op list (``MlirParser.__init__``).

Calibration tables are keyed by tensor (output) name, qtables by op name; both are what
:func:`map_names` maps qsens's canonical tensors onto.  The mapping is exact names first, then the graph:
walking qsens's ops in order, an op maps onto the first unmapped MLIR op of the same Top type whose activation
operands are the (mapped) inputs of the qsens op and whose result shape is the op's (batch aside).  So renamed
ops (another exporter, ``--name_style onnx``, a hand-edited MLIR) map as long as the graph is TPU-MLIR's; an op
with no counterpart is reported unmapped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping

from ..errors import ModelError, QsensError

#: the ops TPU-MLIR's MlirParser leaves out of its op list
SKIP_TYPES = ("top.Weight", "top.None", "func.return")
_ALIAS = re.compile(r"^\s*(#loc[\w.$-]*)\s*=\s*loc\((.*)\)\s*$")
_OP = re.compile(r'^\s*(?P<res>%[\w.$-]+)(?::(?P<n>\d+))?\s*=\s*"(?P<type>[\w.]+)"\((?P<opds>[^)]*)\)')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_REF = re.compile(r"%[\w.$-]+(?:#\d+)?")


class MlirError(QsensError):
    """A ``.mlir`` file that is not TPU-MLIR's Top dialect, or names that cannot be mapped."""


@dataclasses.dataclass(frozen=True)
class MlirOp:
    name: str  # TPU-MLIR's op name (qtable key)
    type: str  # e.g. "top.Conv"
    outputs: tuple[str, ...]  # tensor names (calibration-table keys)
    operands: tuple[str, ...]  # activation operands: producer tensor names (weights / none dropped)
    line: int
    shapes: tuple[tuple[int, ...] | None, ...] = ()  # result shapes (None: dynamic / not a tensor)


@dataclasses.dataclass(frozen=True)
class TopMlir:
    path: str
    ops: tuple[MlirOp, ...]
    state: str  # module.state, e.g. TOP_F32

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(op.name for op in self.ops)


def _loc_tail(line: str) -> str | None:
    """The trailing ``loc(...)`` of an op line (balanced parentheses, quotes respected), or None."""
    s = line.rstrip()
    if not s.endswith(")"):
        return None
    depth, i, in_q = 0, len(s) - 1, False
    while i >= 0:
        c = s[i]
        if c == '"' and (i == 0 or s[i - 1] != "\\"):
            in_q = not in_q
        elif not in_q:
            if c == ")":
                depth += 1
            elif c == "(":
                depth -= 1
                if depth == 0:
                    return s[i - 3 : len(s)] if s[i - 3 : i] == "loc" else None
        i -= 1
    return None


def _result_shapes(text: str) -> tuple[tuple[int, ...] | None, ...]:
    """Result shapes from an op line's trailing ``-> tensor<1x32x112x112xf32>`` (or ``-> (tensor<..>, none)``)."""
    k = text.rfind("->")
    if k < 0:
        return ()
    out = []
    for t in re.findall(r"tensor<([^>]*)>|none", text[k:]):
        dims = t.split("x")[:-1] if t else None
        out.append(tuple(int(d) for d in dims) if dims is not None and all(d.isdigit() for d in dims) else None)
    return tuple(out)


def _resolver(aliases: Mapping[str, str]):
    cache: dict[str, str] = {}

    def inner(text: str, seen=()) -> str:
        def sub(m):
            key = m.group(0)
            if key not in aliases or key in seen:
                return key
            if key not in cache:
                cache[key] = inner(aliases[key], seen + (key,))
            return cache[key]

        return re.sub(r"#loc[\w.$-]*", sub, text)

    return inner


def parse_top_mlir(path: str) -> TopMlir:
    """The op list of a Top-dialect MLIR text file, named as TPU-MLIR's ``MlirParser`` names it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise MlirError(f"cannot read --mlir '{path}' ({e.strerror}); pass the .mlir model_transform.py wrote") from None
    aliases = {}
    for ln in lines:
        m = _ALIAS.match(ln)
        if m:
            aliases[m.group(1)] = m.group(2)
    resolve = _resolver(aliases)
    state = ""
    m = re.search(r'module\.state\s*=\s*"([^"]*)"', "\n".join(lines[:20]))
    if m:
        state = m.group(1)
    raw = []  # (result id, n results, type, operand refs, loc text, line no)
    n_other = 0
    for i, ln in enumerate(lines, 1):
        m = _OP.match(ln)
        if not m:
            continue
        typ = m.group("type")
        if not typ.startswith("top."):
            n_other += typ.startswith("tpu.")
            continue
        tail = _loc_tail(ln)
        loc = resolve(tail[4:-1]) if tail else "unknown"
        raw.append((m.group("res"), int(m.group("n") or 1), typ, _REF.findall(m.group("opds")), loc, i,
                    _result_shapes(ln[: len(ln.rstrip()) - len(tail)] if tail else ln)))
    if not raw or state.upper().startswith("TPU") or n_other:
        what = f"module.state {state}" if state else f"{n_other} tpu.* ops" if n_other else "no top.* ops"
        raise MlirError(f"'{path}' is not Top-dialect MLIR ({what}); pass the .mlir that model_transform.py writes "
                        "(its --mlir output), not a lowered or deployed one")
    producer: dict[str, tuple[int, int]] = {}  # "%7" / "%7#1" -> (raw index, result index)
    for k, (res, n, *_rest) in enumerate(raw):
        for j in range(n):
            producer[f"{res}#{j}" if n > 1 else res] = (k, j)
        if n > 1:
            producer[res] = (k, 0)
    outs_of = [tuple(_QUOTED.findall(r[4])) for r in raw]
    ops = []
    for k, (_res, n, typ, refs, loc, lineno, shapes) in enumerate(raw):
        if typ in SKIP_TYPES:
            continue
        outs = outs_of[k]
        if loc == "unknown" or not outs:
            raise MlirError(f"'{path}' line {lineno}: {typ} has no name (loc({loc})); TPU-MLIR names every op by its "
                            "location: pass model_transform.py's own output")
        fused = re.search(r"fused\[.+?\]", loc)
        name = fused.group(0) if (n > 1 and fused) else outs[0]
        opds = []
        for r in refs:
            if r not in producer:
                continue  # %argN: a function argument (the Input op's operand)
            pk, j = producer[r]
            if raw[pk][2] in SKIP_TYPES:
                continue
            po = outs_of[pk]
            opds.append(po[min(j, len(po) - 1)])
        ops.append(MlirOp(name, typ, outs, tuple(opds), lineno, shapes))
    return TopMlir(path, tuple(ops), state)


# ------------------------------------------------------------------------------------------------ mapping
@dataclasses.dataclass(frozen=True)
class NameRow:
    qsens: str | None  # canonical op name (None: an MLIR op qsens has no op for)
    mlir: str | None  # TPU-MLIR op name (None: unmapped)
    type: str  # Top type without "top."
    status: str  # same | renamed | unmapped | mlir_only
    tensors: tuple[tuple[str, str], ...] = ()  # (qsens tensor, TPU-MLIR tensor) of the op's outputs


@dataclasses.dataclass(frozen=True)
class NameMapping:
    rows: tuple[NameRow, ...]

    @property
    def tensor_map(self) -> dict[str, str]:
        """qsens tensor -> TPU-MLIR tensor, every mapped tensor (identical names included)."""
        return {a: b for r in self.rows for a, b in r.tensors}

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def unmapped(self) -> list[NameRow]:
        return [r for r in self.rows if r.status == "unmapped"]


def map_names(graph, mlir: TopMlir) -> NameMapping:
    """Map every canonical op (and its output tensors) of ``graph`` onto an op of ``mlir`` (see module doc)."""
    m_ops = list(mlir.ops)
    by_name = {op.name: k for k, op in enumerate(m_ops)}
    by_tensor = {t: k for k, op in enumerate(m_ops) for t in op.outputs}
    taken: dict[int, str] = {}
    assign: dict[str, int] = {}
    tmap: dict[str, str] = {}

    def bind(op, k):
        assign[op.name], taken[k] = k, op.name
        outs = m_ops[k].outputs
        for i, t in enumerate(op.outputs):
            if i < len(outs):
                tmap[t] = outs[i]

    for op in graph.ops:  # exact names (op name, else first output tensor)
        k = by_name.get(op.name, by_tensor.get(op.name))
        if k is not None and k not in taken:
            bind(op, k)
    m_inputs = [k for k, o in enumerate(m_ops) if o.type == "top.Input"]
    q_inputs = [op for op in graph.ops if op.type == "Input"]
    for op, k in zip(q_inputs, m_inputs):  # inputs by position
        if op.name not in assign and k not in taken:
            bind(op, k)
    for op in graph.ops:  # the graph: same type, same (mapped) activation operands
        if op.name in assign or op.type == "Input":
            continue
        want = [tmap.get(t) for t in op.inputs]
        shape = tuple(op.out_shapes[0]) if op.out_shapes else None
        for k, mo in enumerate(m_ops):
            if k in taken or mo.type.removeprefix("top.") != op.type or len(mo.operands) != len(want):
                continue
            ms = mo.shapes[0] if mo.shapes else None
            if shape is not None and ms is not None and (len(ms) != len(shape) or ms[1:] != shape[1:]):
                continue  # another tensor (the batch may differ: qsens's --input_shapes vs model_transform's)
            if all(w is None or w == o for w, o in zip(want, mo.operands)) and any(w is not None for w in want):
                bind(op, k)
                break
    rows = []
    for op in graph.ops:
        k = assign.get(op.name)
        if k is None:
            rows.append(NameRow(op.name, None, op.type, "unmapped"))
            continue
        mo = m_ops[k]
        st = "same" if mo.name == op.name else "renamed"
        rows.append(NameRow(op.name, mo.name, op.type, st, tuple((t, tmap[t]) for t in op.outputs if t in tmap)))
    for k, mo in enumerate(m_ops):
        if k not in taken:
            rows.append(NameRow(None, mo.name, mo.type.removeprefix("top."), "mlir_only"))
    return NameMapping(tuple(rows))


# ------------------------------------------------------------------------------------------------ map files
MAP_FORMAT = "qsens-names-map-1"


def write_names_map(path: str, mapping: NameMapping, *, model: str, mlir: str, name_style: str) -> None:
    doc = {"format": MAP_FORMAT, "model": os.path.abspath(model), "mlir": os.path.abspath(mlir),
           "name_style": name_style, "map": mapping.tensor_map,
           "unmapped": [r.qsens for r in mapping.unmapped]}
    try:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    except OSError as e:
        raise MlirError(f"cannot write --write-map '{path}' ({e.strerror}); choose a writable path") from None


def read_names_map(path: str | None, name_style: str | None = None) -> dict[str, str] | None:
    """``{qsens tensor: TPU-MLIR tensor}`` from a ``qsens names --write-map`` file (or a plain JSON object)."""
    if not path:
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise ModelError(f"--names_map '{path}' cannot be read ({e.strerror}); write it with "
                         "`qsens names MODEL --mlir MODEL.mlir --write-map FILE`") from None
    except ValueError as e:
        raise ModelError(f"--names_map '{path}' is not JSON ({e}); write it with `qsens names ... --write-map FILE`") from None
    mp = doc.get("map") if isinstance(doc, dict) and "format" in doc else doc
    if not isinstance(mp, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mp.items()):
        raise ModelError(f"--names_map '{path}' must be a JSON object of qsens name -> TPU-MLIR name (or a "
                         "`qsens names --write-map` file)")
    style = doc.get("name_style") if isinstance(doc, dict) else None
    if name_style and style and style != name_style:
        raise ModelError(f"--names_map '{path}' was written for --name_style {style}; pass --name_style {style}")
    vals = list(mp.values())
    dup = sorted({v for v in vals if vals.count(v) > 1})
    if dup:
        raise ModelError(f"--names_map '{path}' maps several qsens names onto {dup[0]!r}; each TPU-MLIR name once")
    return dict(mp)
