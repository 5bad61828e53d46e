"""``qsens report RUN_DIR``: one self-contained HTML page (inline CSS, plots as base64 PNG) for a search run.

A run directory is what ``qsens search --out_dir`` (``search.json`` with ``ops``), ``qsens search --variant NAME
--out_dir`` (``search.json`` with ``variant``) or ``qsens qtable --out_dir`` (``qtable.json``) writes.  Nothing
is recomputed: :func:`collect_run` reads the files into a :class:`Run` (pure data), :func:`render_html` turns it
into the page, :func:`write_report` does both and writes ``RUN_DIR/report.html``.  A missing optional file
(the qtable, ``new_cali_table.txt``, the base table) drops its section and leaves a note; a directory without
``search.json`` or ``qtable.json`` is a one-line :class:`~qsens.errors.QsensError`.

Canonical op names are their first output tensor's name, so an op's threshold is the table row of its name.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .errors import QsensError
from .tables import CaliTable, read_cali_table, read_qtable

SEARCH_JSON = "search.json"
QTABLE_JSON = "qtable.json"
NEW_TABLE = "new_cali_table.txt"
BASE_TABLE = "cali_table"
REPORT = "report.html"
LOSS_FLOOR = 1e-9  # losses of 0 drawn on a log axis


# ---------------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class OpRow:
    """One op of the page's op table."""

    index: int
    name: str
    type: str | None
    values: dict[str, float]  # column (method, "1 - layer cos" or "score") -> value
    chosen: str | None  # the column of the chosen method (sensitive search)
    threshold: float | None  # the op's threshold in the new table (or the table the run kept)
    is_float: bool


@dataclasses.dataclass
class LossView:
    """How the per-op values read: their columns, the plot's y label and scale, an optional reference line."""

    columns: list[str]
    axis: str
    log: bool
    line: tuple[str, float] | None = None


@dataclasses.dataclass
class CurvePoint:
    """One evaluated model: its number of float layers, similarity (0.5+0.5cos) and what it was."""

    n_float: int
    similarity: float
    label: str
    on_path: bool = True  # joined to the previous model by the search's path (False: a reverted step, a summary)


@dataclasses.dataclass
class ThresholdRow:
    """One tensor of the base table vs ``new_cali_table.txt`` (None: absent from that table)."""

    tensor: str
    old: float | None
    new: float | None

    @property
    def changed(self) -> bool:
        return self.old is None or self.new is None or f"{self.old:.7f}" != f"{self.new:.7f}"


@dataclasses.dataclass
class Run:
    """Everything the page shows, read from one run directory."""

    run_dir: Path
    kind: str  # sensitive | variant | qtable
    title: str
    model: str | None
    facts: list[tuple[str, Any]]
    similarities: list[tuple[str, float, float | None]]  # (model, similarity, plain cosine)
    expected_cos: float | None
    loss_view: LossView | None
    ops: list[OpRow]
    float_layers: list[str]
    float_source: str
    curve: list[CurvePoint]
    thresholds: list[ThresholdRow]
    threshold_tables: tuple[str, str] | None  # (base, new) file names
    options: list[tuple[str, Any]]
    timings: list[tuple[str, float]]
    files: list[tuple[str, int]]
    notes: dict[str, str]  # section id -> why it is missing


# ---------------------------------------------------------------------------------------------------- collect
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise QsensError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the run did not finish writing "
                         "it, rerun the search") from None
    if not isinstance(data, dict):
        raise QsensError(f"{path}: expected a JSON object written by qsens, got {type(data).__name__}")
    return data


def find_run_file(run_dir: Path) -> Path:
    """The run's JSON (``search.json`` or ``qtable.json``); a one-line error naming what is missing."""
    if not run_dir.is_dir():
        raise QsensError(f"{run_dir}: not a directory; pass the --out_dir of a qsens search or qsens qtable run")
    for name in (SEARCH_JSON, QTABLE_JSON):
        if (run_dir / name).is_file():
            return run_dir / name
    ckpts = [c for c in ("search.ckpt.json", "qtable.ckpt.json") if (run_dir / c).is_file()]
    hint = f"; {ckpts[0]} is there: the run did not finish, rerun it with --resume" if ckpts else ""
    raise QsensError(f"{run_dir} is not a qsens run directory: it has no {SEARCH_JSON} (qsens search --out_dir) "
                     f"or {QTABLE_JSON} (qsens qtable --out_dir){hint}")


def _table(path: Path | None) -> CaliTable | None:
    return read_cali_table(path) if path is not None and path.is_file() else None


def _header_value(headers: Sequence[str], key: str) -> str | None:
    """``value`` of a ``# key: value`` table header line."""
    for h in headers:
        k, sep, v = h.lstrip("#").partition(":")
        if sep and k.strip() == key:
            return v.strip()
    return None


def _recorded(run_file: Path, files: Mapping[str, Any], key: str) -> Path | None:
    """A file the run recorded in ``files[key]`` (default name: ``key``): in the run dir, else where recorded if
    the run dir is still where the run wrote it (a copied or moved run dir never reads the original's files)."""
    recorded = files.get(key)
    here = run_file.parent / Path(recorded or key).name
    if here.is_file():
        return here
    written = files.get("search_json") or files.get("qtable_json")
    in_place = written is not None and Path(written).resolve() == run_file.resolve()
    return Path(recorded) if in_place and recorded and Path(recorded).is_file() else None


def _float_layers(run_file: Path, data: dict, notes: dict) -> tuple[list[str], str]:
    """The float layers from the run's qtable (what a deployment reads), else from its JSON."""
    q = _recorded(run_file, data.get("files", {}), "qtable")
    if q is not None:
        return [n for n, mode in read_qtable(q).ops if mode != "INT8"], q.name
    notes["float"] = "the qtable file is missing: float layers as recorded in the run's JSON"
    return list(data.get("float_layers", [])), "run JSON"


def _threshold_rows(base: CaliTable | None, new: CaliTable | None) -> list[ThresholdRow]:
    if base is None or new is None:
        return []
    rows = [ThresholdRow(t, base.threshold(t) if t in base else None, e.threshold) for t, e in new.entries.items()]
    return rows + [ThresholdRow(t, e.threshold, None) for t, e in base.entries.items() if t not in new]


def _flat(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flat(v, f"{prefix}{k}: ")
        elif isinstance(v, int | float):
            out.append((f"{prefix}{k}", v))
    return out


def _sims(summary: Mapping[str, Any], keys: Sequence[tuple[str, str]]) -> list[tuple[str, float, float | None]]:
    return [(label, summary[k]["similarity"], summary[k].get("cosine")) for k, label in keys if k in summary]


class _Context(NamedTuple):
    """What every kind of run reads besides its JSON."""

    base: CaliTable | None
    new: CaliTable | None
    float_layers: list[str]
    notes: dict[str, str]


def _collect_sensitive(data: dict, ctx: _Context) -> dict:
    """``qsens search`` (TPU-MLIR's run_sensitive_layer): every op, method, threshold, loss."""
    floats = set(ctx.float_layers)
    methods = [c["method"] for c in data["ops"][0]["candidates"]] if data["ops"] else []
    ops = [OpRow(i, o["op"], o["type"], {c["method"]: c["loss"] for c in o["candidates"]}, o["best_method"],
                 o["best_threshold"], o["op"] in floats) for i, o in enumerate(data["ops"])]
    s = data["summary"]
    ctx.notes["curve"] = ("the sensitive search scores only the all-INT8 and the final mixed model (both in the "
                             "summary above); a variant (qsens search --variant auto_n) records the whole curve")
    return {
        "title": "sensitive-layer search (TPU-MLIR run_sensitive_layer.py)",
        "similarities": _sims(s, [("int8", "INT8"), ("mix_new_table", "MIX, new table"),
                                  ("mix_original_table", "MIX, original table")]),
        "facts": [("ops", len(ops)), ("candidates evaluated", f"{data['n_candidates_evaluated']} of "
                                                               f"{data['n_candidates']}")],
        "loss_view": LossView(methods, "loss = 1 - similarity (only this op INT8)", True),
        "ops": ops, "curve": [], "options": [("expected_cos", s["expected_cos"])],
    }


def _collect_variant(data: dict, ctx: _Context) -> dict:
    """``qsens search --variant NAME``: settings, exact evaluations, the strategy's state."""
    st, s, floats = data["state"], data["summary"], set(ctx.float_layers)
    scores: dict[str, float] = st.get("scores") or {}
    new = ctx.new
    names = list(new.entries) if new is not None else list(dict.fromkeys([*scores, *ctx.float_layers]))
    ops = [OpRow(i, n, None, {"score": scores[n]} if n in scores else {}, None,
                 new.threshold(n) if new is not None and n in new else None, n in floats) for i, n in enumerate(names)]
    if not scores:
        ctx.notes["losses"] = (f"the {data['variant']} variant records no per-op scores (and no variant records "
                                  "per-method losses: that is the sensitive search)")
    if "points" in st:
        front = set(st.get("front", []))
        curve = [CurvePoint(len(p["float"]), p["similarity"], "Pareto front" if j in front else "evaluated")
                 for j, p in enumerate(st["points"])]
    else:
        curve = [CurvePoint(int(n), sim, "exact check") for n, sim in st.get("curve", [])]
    if not curve:
        ctx.notes["curve"] = f"the {data['variant']} variant records no similarity curve"
    options = [(k, f"{len(v)} tensors" if isinstance(v, Mapping) else v) for k, v in data["settings"].items()]
    return {
        "title": f"search variant {data['variant']}",
        "similarities": _sims(s, [("int8", "INT8"), ("int8_new_table", "INT8, new table"),
                                  ("mix_new_table", "MIX, new table"), ("mix_original_table", "MIX, original table")]),
        "facts": [("exact evaluations", s["n_evaluations"]), ("thresholds changed", s["n_thresholds_changed"]),
                  *((f"evaluator {k}", v) for k, v in data["counts"].items())],
        "loss_view": LossView(["score"], f"{data['variant']} score (gain or loss; docs/variants.md)", False)
        if scores else None,
        "ops": ops, "curve": curve, "options": options,
    }


def _collect_qtable(data: dict, ctx: _Context) -> dict:
    """``qsens qtable`` (TPU-MLIR's run_qtable): layer cos per op in walk order, the float steps."""
    st, s, floats = data["state"], data["summary"], set(ctx.float_layers)
    cos = dict((n, c) for n, c in st["layer_cos"])
    names = list(cos)
    for step in st["steps"]:  # ops a step set float without a layer cos of their own go after the step's op
        at = names.index(step["op"]) + 1 if step["op"] in names else len(names)
        for n in step["next_ops"]:
            if n not in names:
                names.insert(at, n)
                at += 1
    names += [n for n in ctx.float_layers if n not in names]
    base = ctx.base
    ops = [OpRow(i, n, None, {"1 - layer cos": 1.0 - cos[n]} if n in cos else {}, None,
                 base.threshold(n) if base is not None and n in base else None, n in floats)
           for i, n in enumerate(names)]
    curve, fp = [CurvePoint(0, st["all_int8_cos"], "all INT8")], []
    for step in st["steps"]:  # TPU-MLIR's outputs cos of each step's model (run from the step's op on)
        model = list(dict.fromkeys([*fp, step["op"], *step["next_ops"]]))
        label = "step reverted" if step["reverted"] else f"step {step['result'] or 'kept'}"
        curve.append(CurvePoint(len(model), step["outputs_cos"], label, not step["reverted"]))
        fp = fp if step["reverted"] else model
    curve.append(CurvePoint(len(ctx.float_layers), s["true_mix_similarity"], "the qtable's model", False))
    ctx.notes["thresholds"] = ("the mix-precision search keeps the calibration table's thresholds: it writes no "
                                  f"{NEW_TABLE}")
    return {
        "title": "mix-precision search (TPU-MLIR run_qtable.py)",
        "similarities": [("INT8", s["all_int8_similarity"], None), ("MIX, the qtable's model", s["true_mix_similarity"],
                                                                    None),
                         ("MIX as TPU-MLIR reports it (last step)", s["reported_mix_similarity"], None)],
        "facts": [("ops walked", len(cos)), ("float steps", s["n_steps"]), ("reverted steps", s["n_reverted"]),
                  ("end", s["end"] + (f": {s['exception']}" if s["exception"] else ""))],
        "loss_view": LossView(["1 - layer cos"], "1 - layer cos (INT8 prefix, accumulated error)", True,
                              ("1 - min_layer_cos", 1.0 - s["min_layer_cos"])),
        "ops": ops, "curve": curve,
        "options": [(k, s[k]) for k in ("expected_cos", "min_layer_cos", "max_float_layers")],
    }


def collect_run(run_dir, calibration_table=None) -> Run:
    """Read a run directory into a :class:`Run`.

    ``calibration_table``: the base table the search started from, for the old-vs-new threshold table (default
    ``RUN_DIR/cali_table``, which qsens writes when it calibrated itself)."""
    run_dir = Path(run_dir)
    path = find_run_file(run_dir)
    data = _read_json(path)
    notes: dict[str, str] = {}
    base_path = Path(calibration_table) if calibration_table else run_dir / BASE_TABLE
    if calibration_table and not base_path.is_file():
        raise QsensError(f"--calibration_table {base_path}: no such file; pass the table the search was given")
    base, new = _table(base_path), _table(run_dir / NEW_TABLE)
    float_layers, float_source = _float_layers(path, data, notes)
    ctx = _Context(base, new, float_layers, notes)
    if path.name == QTABLE_JSON:
        kind, collect = "qtable", _collect_qtable
    elif "ops" in data:
        kind, collect = "sensitive", _collect_sensitive
    elif "variant" in data:
        kind, collect = "variant", _collect_variant
    else:
        raise QsensError(f"{path}: neither a sensitive search's (no 'ops') nor a variant's (no 'variant') "
                         "search.json; pass a directory written by qsens search")
    try:
        part = collect(data, ctx)
        summary = data["summary"]
    except (KeyError, TypeError, IndexError) as e:
        raise QsensError(f"{path}: not the structure qsens writes for a {kind} run ({type(e).__name__}: {e}); "
                         "was it written by another qsens version?") from None
    both = base is not None and new is not None
    if kind != "qtable" and not both:
        missing = " and ".join(n for n, t in ((base_path.name, base), (NEW_TABLE, new)) if t is None)
        notes["thresholds"] = (f"{missing} not found in {run_dir}" + ("" if base is not None else
                               "; if the search was given --calibration_table, pass the same table to qsens "
                               "report --calibration_table"))
    tables = [t for t in (new, base) if t is not None]
    headers = tables[0].headers if tables else ()
    model = _header_value(headers, "mlir") or _model_from_log(run_dir / "MixPrecSearcher")
    samples = _header_value(headers, "sample number")
    facts = [("model", model or "not recorded"), ("run directory", str(run_dir.resolve())),
             *([("calibration samples", samples)] if samples else []),
             ("inference images", summary["n_images"]), *part.pop("facts"),
             ("float layers", len(float_layers))]
    return Run(run_dir=run_dir, kind=kind, model=model, facts=facts, expected_cos=summary["expected_cos"],
               float_layers=float_layers, float_source=float_source, thresholds=_threshold_rows(base, new),
               threshold_tables=(str(calibration_table or BASE_TABLE), NEW_TABLE) if both else None,
               timings=_flat(data.get("timings", {})),
               files=sorted((p.name, p.stat().st_size) for p in run_dir.iterdir() if p.is_file() and p.name != REPORT),
               notes=notes, **part)


def _model_from_log(log: Path) -> str | None:
    """The model name of the mix-precision search's log (``run float mode: <model>``)."""
    if log.is_file():
        for line in log.read_text().splitlines():
            if "run float mode: " in line:
                return line.split("run float mode: ", 1)[1].strip()
    return None


# ---------------------------------------------------------------------------------------------------- plots
def _png(fig) -> str:
    """A matplotlib figure as a ``data:`` URI (Agg canvas; no global pyplot state)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_op_values(run: Run) -> str:
    """Each op's value per column (per-method loss, 1 - layer cos or score), the chosen method ringed,
    the float layers shaded red."""
    import numpy as np
    from matplotlib.figure import Figure

    view = run.loss_view
    n = len(run.ops)
    x = np.arange(n)
    fig = Figure(figsize=(min(max(10.0, n * 0.2), 60.0), 4.6))
    ax = fig.add_subplot()
    for j, op in enumerate(run.ops):
        if op.is_float:
            ax.axvspan(j - 0.45, j + 0.45, color="#d93025", alpha=0.18, lw=0)

    def shown(v):
        return max(v, LOSS_FLOOR) if view.log else v

    for col in view.columns:
        ys = [shown(op.values[col]) if col in op.values else np.nan for op in run.ops]
        ax.plot(x, ys, marker="o", ms=3, lw=1, label=col)
    chosen = [(j, shown(op.values[op.chosen])) for j, op in enumerate(run.ops) if op.chosen in op.values]
    if chosen:
        ax.plot(*zip(*chosen), ls="none", marker="o", ms=8, mfc="none", mec="black", mew=1, label="chosen method")
    if view.line:
        ax.axhline(shown(view.line[1]), color="gray", ls="--", lw=1, label=view.line[0])
    if view.log:
        ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([op.name for op in run.ops], rotation=90, fontsize=6)
    for label, op in zip(ax.get_xticklabels(), run.ops):
        if op.is_float:
            label.set_color("#b3261e")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel(view.axis + (f" (log; 0 at {LOSS_FLOOR:g})" if view.log else ""), fontsize=8)
    ax.set_title(f"{len(run.ops)} ops, the {len(run.float_layers)} float layers shaded red", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_curve(run: Run) -> str:
    """Similarity (0.5+0.5cos) against the number of float layers of each evaluated model."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 4.0))
    ax = fig.add_subplot()
    path = [p for p in run.curve if p.on_path]
    ax.plot([p.n_float for p in path], [p.similarity for p in path], color="#9aa0a6", lw=1, zorder=1)
    for label in dict.fromkeys(p.label for p in run.curve):
        pts = [p for p in run.curve if p.label == label]
        ax.scatter([p.n_float for p in pts], [p.similarity for p in pts], s=22, label=label, zorder=2)
    if run.expected_cos is not None:
        ax.axhline(run.expected_cos, color="gray", ls=":", lw=1, label=f"expected_cos {run.expected_cos:g}")
    ax.axvline(len(run.float_layers), color="#d93025", alpha=0.4, lw=3, label="the run's float layers")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("float layers")
    ax.set_ylabel("similarity (0.5+0.5cos)")
    ax.legend(fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------------------------------------- render
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#202124;margin:0;background:#f8f9fa}
main{max-width:1240px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dadce0;padding-bottom:4px}
h3{font-size:14px;margin:10px 0 4px;color:#3c4043}
.sub{color:#5f6368;margin:0 0 14px;word-break:break-all}
.facts{display:flex;flex-wrap:wrap;gap:10px 36px;align-items:flex-start}
nav a{margin-right:14px;color:#1a73e8;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}
.card{background:#fff;border:1px solid #dadce0;border-radius:8px;padding:10px 14px;min-width:150px}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}.card .k{color:#5f6368;font-size:12px}
.card .c{color:#5f6368;font-size:12px}
table{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #eceff1;text-align:left;white-space:nowrap}
td.n{text-align:right;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.scroll{max-height:72vh;overflow:auto;border:1px solid #dadce0;border-radius:6px;display:inline-block;max-width:100%}
.scroll thead th{position:sticky;top:0;background:#e8eaed;z-index:1}
table.kv th{color:#5f6368;font-weight:500}
tr.float-layer td{background:#fce8e6}tr.float-layer td.mode{color:#b3261e;font-weight:700}
tr.changed td{background:#fef7e0}
td.chosen{font-weight:700;text-decoration:underline}
.plot{overflow-x:auto;background:#fff;border:1px solid #dadce0;border-radius:6px;padding:6px}
.plot img{display:block;max-width:none}
.note{color:#5f6368;font-size:13px;font-style:italic;margin:6px 0}
.floats code{background:#fce8e6;color:#b3261e;padding:1px 5px;border-radius:4px;margin-right:6px}
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return _e(v)
    return f"{v:d}" if isinstance(v, int) else f"{v:.6g}"


def _note(run: Run, key: str) -> str:
    return f'<p class="note">Not shown: {_e(run.notes[key])}.</p>' if key in run.notes else ""


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_num(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _header(run: Run) -> str:
    cards = "".join(
        f'<div class="card"><div class="k">{_e(label)}</div><div class="v">{sim:.6f}</div>'
        + (f'<div class="c">cosine {cos:.6f}</div>' if cos is not None else "") + "</div>"
        for label, sim, cos in run.similarities)
    floats = "".join(f"<code>{_e(n)}</code>" for n in run.float_layers) or "none"
    opts = f"<div><h3>Options</h3>{_kv(run.options)}</div>" if run.options else ""
    return (f"<h1>{_e(Path(run.model).name if run.model else 'unknown model')}</h1><p class=\"sub\">{_e(run.title)}</p>"
            f'<div class="cards">{cards}</div>'
            f'<p class="floats">Float layers (from {_e(run.float_source)}): {floats}</p>'
            + (f'<p class="note">Note: {_e(run.notes["float"])}.</p>' if "float" in run.notes else "") +
            f'<div class="facts"><div><h3>Run</h3>{_kv(run.facts)}</div>{opts}</div>'
            '<p class="note">The run directory records neither the command line nor the dataset path; the '
            "options shown are the ones its files keep.</p>")


def _img(uri: str, alt: str) -> str:
    return f'<div class="plot"><img alt="{_e(alt)}" src="{uri}"></div>'


def _ops_table(run: Run) -> str:
    cols = run.loss_view.columns if run.loss_view else []
    head = "".join(f"<th>{_e(c)}</th>" for c in ["#", "op", "type", *cols, "threshold", "mode"])
    rows = []
    for op in run.ops:
        vals = "".join(f'<td class="n{" chosen" if c == op.chosen else ""}">'
                       f'{f"{op.values[c]:.3e}" if c in op.values else "—"}</td>' for c in cols)
        th = f"{op.threshold:.7f}" if op.threshold is not None else "—"
        cls = ' class="float-layer"' if op.is_float else ""
        rows.append(f'<tr{cls}><td class="n">{op.index}</td><td>{_e(op.name)}</td><td>{_e(op.type or "—")}</td>'
                    f'{vals}<td class="n">{th}</td><td class="mode">{"FLOAT" if op.is_float else "INT8"}</td></tr>')
    chosen = " The chosen method's loss is underlined; its threshold is the op's in the new table." \
        if run.kind == "sensitive" else ""
    return (f'<p class="note">Float layers in red.{chosen}</p><div class="scroll"><table><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>")


def _threshold_table(run: Run) -> str:
    def f(v):
        return f"{v:.7f}" if v is not None else "—"

    rows = []
    for r in run.thresholds:
        ratio = f"{r.new / r.old:.4f}" if r.old and r.new is not None else "—"
        cls = ' class="changed"' if r.changed else ""
        rows.append(f'<tr{cls}><td>{_e(r.tensor)}</td><td class="n">{f(r.old)}'
                    f'</td><td class="n">{f(r.new)}</td><td class="n">{ratio}</td></tr>')
    base, new = run.threshold_tables
    n_changed = sum(r.changed for r in run.thresholds)
    return (f'<p class="note">{n_changed} of {len(run.thresholds)} thresholds changed (highlighted); old: '
            f"{_e(base)}, new: {_e(new)}.</p><div class=\"scroll\"><table><thead><tr><th>tensor</th>"
            f"<th>old threshold</th><th>new threshold</th><th>new / old</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div>")


def render_html(run: Run) -> str:
    """The page: header, per-op plot, similarity curve, op table, thresholds, timings, files."""
    sections = [("losses", "Per-op loss by calibration method" if run.kind == "sensitive" else "Per-op values",
                 _img(plot_op_values(run), "per-op values") if run.loss_view and run.ops else ""),
                ("curve", "Similarity vs number of float layers",
                 _img(plot_curve(run), "similarity vs float layers") if run.curve else ""),
                ("ops", "Ops", _ops_table(run) if run.ops else ""),
                ("thresholds", "Thresholds: base table vs new table",
                 _threshold_table(run) if run.threshold_tables else ""),
                ("timings", "Timings", _kv([(k, f"{v:.2f} s" if k.endswith("_s") else f"{v:.2f} cores"
                                              if k.endswith("_cores") else v) for k, v in run.timings])
                 if run.timings else ""),
                ("files", "Files in the run directory", _kv([(n, f"{s:,} bytes") for n, s in run.files]))]
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content or _note(run, sid) or _missing(sid)}</section>'
                   for sid, title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>qsens report: {_e(run.model or run.run_dir.name)}</title><style>{CSS}</style></head>"
            f"<body><main>{_header(run)}<nav>{nav}</nav>{body}</main></body></html>\n")


def _missing(section: str) -> str:
    return f'<p class="note">Not shown: the run recorded nothing for this section ({_e(section)}).</p>'


def write_report(run_dir, out=None, *, calibration_table=None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); returns its path."""
    run = collect_run(run_dir, calibration_table)
    path = Path(out) if out else Path(run_dir) / REPORT
    page = render_html(run)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise QsensError(f"cannot write the report to {path} ({e.strerror}); choose another -o") from None
    return path
