"""Generate every number, table and figure of the paper from the committed results JSON.

    python paper/make_tables.py [--out DIR]          (default: paper/generated/)

Reads ``experiments/results/**/*.json`` and ``benchmarks/results/*.json`` (never writes them) and writes into
``DIR`` (whose old files it removes first):

* ``numbers.tex``: one ``\\newcommand`` per number the prose of ``paper.tex`` uses, and one ``\\newif`` flag
  per results file (``\\ifHaveSeedLiteZero`` ...) so the prose about a file that is missing is left out;
* ``tab_*.tex``: booktabs ``tabular`` bodies; ``fig_*.tex`` + ``fig_*.png``: figure includes and the figures
  (matplotlib Agg); ``sec_*.tex``: the generated parts of the sections on the experiments that may not have run;
  ``status_*.tex``: empty, or the sentence saying that a results file is missing;
* ``numbers.json``: for every number written into a ``.tex`` file, ``{id: {"file": results JSON path relative to
  the repository, "path": [keys...], "value": the raw value, "fmt": the format, "transform": null or "len",
  "text": the exact string in the .tex, "tex": the generated file that holds it}}``.

A results file that is missing gives the sentence "(experiment X has not been run; see ...)" in place of its
numbers, never a number; a macro of a missing file expands to ``\\MissingResult{file}``.  All formatting goes
through :func:`fmt`.  The output depends only on the JSON (and the matplotlib version): the same results give the
same bytes (``tests/test_paper.py`` checks that the committed ``paper/generated/`` is up to date).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "paper" / "generated"

# ---------------------------------------------------------------------------------------------------------------
# formatting: the only place where a number becomes text

_DIGITS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


def tex_escape(s: str) -> str:
    """``s`` with LaTeX's special characters escaped (for op names, table names, paths)."""
    rep = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(rep.get(c, c) for c in s).replace("--", "-{}-")  # no en-dash ligature in flags


def fmt(value, kind: str) -> str:
    """The text of ``value`` in the paper.  ``kind``: ``fN`` (N decimals), ``pctN`` (a rate 0..1 as a percentage
    with N decimals, no % sign), ``int``, ``s`` (seconds: 1 decimal below 100 s, none above), ``ms`` (seconds as
    milliseconds, 1 decimal), ``g`` (shortest form, for targets such as 0.999), ``sci`` (one significant decimal, ``a\\times10^{b}``), ``str`` (escaped text),
    ``bool`` (yes/no).  ``None`` (a search that did not reach its target, a value not measured) is ``--``.
    A negative number gets a math minus."""
    if value is None:
        return "--"
    if kind == "bool":
        return "yes" if value else "no"
    if kind == "str":
        return tex_escape(str(value))
    if kind == "int":
        if float(value) != int(value):
            raise ValueError(f"not an integer: {value!r}")
        text = f"{int(value):d}"
    elif kind == "s":
        text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    elif kind == "g":
        text = f"{value:g}"
    elif kind == "ms":
        text = f"{1000 * value:.1f}"
    elif kind == "sci":
        mant, exp = f"{value:.1e}".split("e")
        return rf"\ensuremath{{{mant}\times10^{{{int(exp)}}}}}"
    elif m := re.fullmatch(r"f(\d)", kind):
        text = f"{value:.{int(m.group(1))}f}"
    elif m := re.fullmatch(r"pct(\d)", kind):  # (pct0: a level such as 0.95 -> 95)
        text = f"{100 * value:.{int(m.group(1))}f}"
    else:
        raise ValueError(f"unknown format {kind!r}")
    return r"\ensuremath{-}" + text[1:] if text.startswith("-") else text


def macro_name(*parts: str) -> str:
    """A LaTeX macro name from ``parts``: CamelCase, digits spelt out (``Lite0``, ``INT8`` -> ``LiteZeroIntEight``)."""
    out = []
    for p in parts:
        for w in re.split(r"[^A-Za-z0-9]+", p):
            w = re.sub(r"\d", lambda d: _DIGITS[int(d.group())], w)
            if w:
                out.append(w[0].upper() + w[1:])
    name = "".join(out)
    if not re.fullmatch(r"[A-Za-z]+", name):
        raise ValueError(name)
    return name


def apply_transform(value, transform: str | None):
    """The value a numbers.json entry records: the JSON value itself, or its length (``len``)."""
    if transform is None:
        return value
    if transform == "len":
        return len(value)
    raise ValueError(transform)


def walk(data, path):
    """``data[path[0]][path[1]]...`` (KeyError/IndexError when the structure differs)."""
    for k in path:
        data = data[k]
    return data


# ---------------------------------------------------------------------------------------------------------------
# the generator's state


class Gen:
    """Collects the generated files, the macros, the flags and the numbers.json entries."""

    def __init__(self, root: Path):
        self.root = root
        self.entries: dict[str, dict] = {}
        self.macros: list[tuple[str, str]] = []
        self.flags: list[tuple[str, bool]] = []
        self.files: dict[str, str | bytes] = {}
        self._json: dict[str, object] = {}

    # -- results files
    def has(self, rel: str) -> bool:
        """Whether the results file ``rel`` (relative to the repository) exists."""
        return (self.root / rel).is_file()

    def load(self, rel: str):
        """The parsed JSON of ``rel`` (read once)."""
        if rel not in self._json:
            self._json[rel] = json.loads((self.root / rel).read_text())
        return self._json[rel]

    def get(self, rel: str, path: list, transform: str | None = None):
        """The value at ``path`` in ``rel`` (after ``transform``), without recording it."""
        return apply_transform(walk(self.load(rel), path), transform)

    # -- numbers
    def num(self, key: str, rel: str, path: list, kind: str, tex: str, transform: str | None = None) -> str:
        """The formatted value at ``rel``/``path``; recorded in numbers.json as ``key`` (found in ``tex``)."""
        value = self.get(rel, path, transform)
        text = fmt(value, kind)
        if key in self.entries and self.entries[key]["text"] != text:
            raise ValueError(f"two values for {key}")
        self.entries[key] = {"file": rel, "path": list(path), "value": value, "fmt": kind, "transform": transform,
                             "text": text, "tex": tex}
        return text

    def macro(self, name: str, rel: str, path: list, kind: str, transform: str | None = None) -> None:
        """``\\name`` = the formatted value (``\\MissingResult{rel}`` when the results file is missing)."""
        if not re.fullmatch(r"[A-Za-z]+", name) or any(n == name for n, _ in self.macros):
            raise ValueError(f"bad or repeated macro name {name}")
        if self.has(rel):
            text = self.num(name, rel, path, kind, "numbers.tex", transform)
        else:
            text = rf"\MissingResult{{{tex_escape(rel)}}}"
        self.macros.append((name, text))

    def flag(self, name: str, on: bool) -> None:
        """``\\ifname`` in numbers.tex: true when the results it names exist."""
        if not re.fullmatch(r"[A-Za-z]+", name) or any(n == name for n, _ in self.flags):
            raise ValueError(f"bad or repeated flag name {name}")
        self.flags.append((name, bool(on)))

    def write(self, name: str, content: str | bytes) -> None:
        """Add the generated file ``name`` (each written once)."""
        if name in self.files:
            raise ValueError(f"{name} written twice")
        self.files[name] = content

    def numbers_tex(self) -> str:
        """numbers.tex: the flags, then the macros."""
        lines = ["% generated by paper/make_tables.py from the results JSON: do not edit",
                 r"\providecommand{\MissingResult}[1]{\emph{(missing: #1)}}"]
        for name, on in self.flags:
            lines += [rf"\newif\if{name}", rf"\{name}{'true' if on else 'false'}"]
        lines += [rf"\newcommand{{\{name}}}{{{text}}}" for name, text in self.macros]
        return "\n".join(lines) + "\n"

    def numbers_json(self) -> str:
        """numbers.json: every recorded number, sorted by id."""
        return json.dumps(self.entries, indent=1, sort_keys=True) + "\n"


def not_run(experiment: str, where: str) -> str:
    """The sentence that stands in for the results of an experiment that has not been run."""
    return (rf"\emph{{(experiment {tex_escape(experiment)} has not been run; see {tex_escape(where)})}}" + "\n")


def tabular(colspec: str, header: list[str], rows: list[list[str] | str]) -> str:
    """A booktabs tabular; a row given as a string is written as it is (``\\midrule``, a spanning row)."""
    out = [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for r in rows:
        out.append(r if isinstance(r, str) else " & ".join(r) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# figures


def _plt():
    """matplotlib's pyplot on the Agg backend with the paper's font sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 6.5, "svg.hashsalt": "qsens",
                         "path.simplify": False})
    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes without the software/date metadata (same figure, same bytes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, metadata={"Software": None})
    return buf.getvalue()


TEXT_WIDTH_IN = 6.85  # the paper's text width: a figure this wide appears at its own size (8 pt labels)


def figure(g: Gen, name: str, fig) -> None:
    """``name.png`` and ``name.tex`` (its include, scaled so the labels come out at the figure's point size)."""
    g.write(f"{name}.png", png_bytes(fig))
    w = min(1.0, fig.get_figwidth() / TEXT_WIDTH_IN)
    g.write(f"{name}.tex", rf"\includegraphics[width={w:.2f}\linewidth]{{generated/{name}.png}}" + "\n")


# ---------------------------------------------------------------------------------------------------------------
# experiment 1: the seed's table

SEED_DIR = "experiments/results/seed_table"
SEED_MODELS = {"efficientnet_lite0": "LiteZero", "efficientnet_lite2": "LiteTwo", "mnist_mbv2": "Mnist"}
SEED_ROWS = {"FLOAT": "FLOAT", "INT8": "INT8", "INT8 new table": "INT8, new table",
             "MIX original table, 1 float": "MIX, 1 float, original table",
             "MIX new table, 1 float": "MIX, 1 float, new table",
             "MIX original table, 5 float": "MIX, 5 float, original table",
             "MIX new table, 5 float": "MIX, 5 float, new table"}


def seed_rel(model: str) -> str:
    """The seed-table results file of ``model``."""
    return f"{SEED_DIR}/{model}.json"


def seed_table(g: Gen) -> None:
    """tab_seed.tex, fig_seed.{tex,png} and the seed-table macros."""
    present = [m for m in SEED_MODELS if g.has(seed_rel(m))]
    g.flag("HaveSeed", bool(present))
    for m, short in SEED_MODELS.items():
        g.flag(f"HaveSeed{short}", m in present)
    g.write("status_seed.tex", "" if len(present) == len(SEED_MODELS) else not_run(
        "seed_table" + ("" if not present else " (models: " + ", ".join(m for m in SEED_MODELS if m not in present)
                        + ")"), "experiments/seed_table.py"))
    body, layers = [], []
    for m in SEED_MODELS:
        rel = seed_rel(m)
        if m not in present:
            body += [r"\midrule" if body else "", rf"\multicolumn{{6}}{{l}}{{\texttt{{{tex_escape(m)}}}: "
                     + not_run("seed_table", "experiments/seed_table.py").strip() + r"} \\"]
            continue
        d = g.load(rel)
        dt = d["data"]
        tid = f"tab_seed:{m}"
        n_held = g.num(f"{tid}:held_out_n", rel, ["data", "held_out_n"], "int", "tab_seed.tex")
        n_lab = g.num(f"{tid}:labelled_n", rel, ["data", "labelled_n"], "int", "tab_seed.tex")
        n_cal = g.num(f"{tid}:calibration_images", rel, ["data", "calibration_images"], "int", "tab_seed.tex")
        n_srch = g.num(f"{tid}:search_images", rel, ["data", "search_images"], "int", "tab_seed.tex")
        if body:
            body.append(r"\midrule")
        body.append(rf"\multicolumn{{6}}{{l}}{{\textbf{{\texttt{{{tex_escape(m)}}}}}: held-out {n_held} images, "
                    rf"labelled {n_lab}}} \\")
        body.append(r"\addlinespace[2pt]")
        for row in d["rows"]:
            p = ["rows", row]
            cells = [tex_escape(SEED_ROWS.get(row, row))]
            for col, kind in (("similarity", "f6"), ("cosine", "f6"), ("top1_agreement", "f3")):
                cells.append(g.num(f"{tid}:{row}:{col}", rel, p + ["held_out", col], kind, "tab_seed.tex"))
            lab = d["rows"][row]["labelled"]
            for k in ("top1", "top5"):
                if lab is None:
                    cells.append("--")
                    continue
                v = g.num(f"{tid}:{row}:{k}", rel, p + ["labelled", k], "pct1", "tab_seed.tex")
                lo = g.num(f"{tid}:{row}:{k}_lo", rel, p + ["labelled", f"{k}_ci95", 0], "pct1", "tab_seed.tex")
                hi = g.num(f"{tid}:{row}:{k}_hi", rel, p + ["labelled", f"{k}_ci95", 1], "pct1", "tab_seed.tex")
                cells.append(f"{v} [{lo}, {hi}]")
            body.append(cells)
        layers.append(rf"\texttt{{{tex_escape(m)}}}: {n_cal} calibration / {n_srch} search images of "
                      rf"\texttt{{{tex_escape(dt['search'])}}}, labelled images of \texttt{{{tex_escape(dt['labelled'])}}}"
                      ", float layers in the search's order "
                      + ", ".join(rf"\texttt{{{tex_escape(x)}}}" for x in d["qtable"]))
    body = [b for b in body if b != ""]
    g.write("seed_layers.tex", ("; ".join(layers) + ".\n") if layers else "")
    g.write("tab_seed.tex", tabular("lrrrrr", ["configuration", "similarity", "cosine", "top-1 agr.",
                                               r"top-1 \% [\CILevel\,\% CI]", r"top-5 \% [\CILevel\,\% CI]"], body)
            if present else not_run("seed_table", "experiments/seed_table.py"))
    # macros the prose uses
    for m in present:
        short, rel = SEED_MODELS[m], seed_rel(m)
        rows = g.load(rel)["rows"]
        for row, rshort in (("FLOAT", "Float"), ("INT8", "IntEight"), ("INT8 new table", "IntEightNew"),
                            ("MIX original table, 1 float", "MixOrigOne"), ("MIX new table, 1 float", "MixNewOne"),
                            ("MIX original table, 5 float", "MixOrigFive"), ("MIX new table, 5 float", "MixNewFive")):
            if row not in rows:
                continue
            base = ["rows", row]
            if row != "FLOAT":
                g.macro(f"Seed{short}{rshort}Sim", rel, base + ["held_out", "similarity"], "f6")
                g.macro(f"Seed{short}{rshort}Agree", rel, base + ["held_out", "top1_agreement"], "pct1")
            if rows[row]["labelled"] is not None:
                g.macro(f"Seed{short}{rshort}TopOne", rel, base + ["labelled", "top1"], "pct1")
                g.macro(f"Seed{short}{rshort}TopOneLo", rel, base + ["labelled", "top1_ci95", 0], "pct1")
                g.macro(f"Seed{short}{rshort}TopOneHi", rel, base + ["labelled", "top1_ci95", 1], "pct1")
        g.macro(f"Seed{short}LabelledN", rel, ["data", "labelled_n"], "int")
        g.macro(f"Seed{short}HeldN", rel, ["data", "held_out_n"], "int")
        g.macro(f"Seed{short}ReportedIntEight", rel, ["search_reported", "int8"], "f6")
        g.macro(f"Seed{short}ReportedMix", rel, ["search_reported", "mix_new_table"], "f6")
    if present:  # the TPU-MLIR post's MobileNetV2 numbers travel in every seed-table JSON
        rel = seed_rel(present[0])
        for k, short in (("FLOAT", "Float"), ("INT8", "IntEight"), ("MIX original table", "MixOrig"),
                         ("MIX new table", "MixNew")):
            g.macro(f"SeedPost{short}TopOne", rel, ["seed_post", "top1", k], "f2")
        g.macro("SeedPostIntEightSim", rel, ["seed_post", "similarity", "INT8"], "f6")
        g.macro("SeedPostMixNewSim", rel, ["seed_post", "similarity", "MIX new table"], "f6")
        g.macro("SeedPostFloatLayers", rel, ["seed_post", "float_layers"], "int")
    seed_figure(g, present)


def seed_figure(g: Gen, present: list[str]) -> None:
    """fig_seed: per model, labelled top-1 with its bootstrap interval and the held-out similarity."""
    if not present:
        g.write("fig_seed.tex", not_run("seed_table", "experiments/seed_table.py"))
        return
    level = fmt(g.get(INPUTS, ["parameters", "bootstrap_ci_level"]), "pct0")
    plt = _plt()
    fig, axes = plt.subplots(2, len(present), figsize=(2.2 * len(present) + 0.3, 2.5), squeeze=False)
    colors = {"FLOAT": "#444444", "INT8": "#c0392b", "INT8 new table": "#e67e22"}
    for j, m in enumerate(present):
        rows = g.load(seed_rel(m))["rows"]
        names = list(rows)
        x = list(range(len(names)))
        cols = [colors.get(n, "#2e86c1" if "new table" in n else "#85c1e9") for n in names]
        ax = axes[0][j]
        for i, n in enumerate(names):
            lab = rows[n]["labelled"]
            if lab is None:
                continue
            v, (lo, hi) = 100 * lab["top1"], lab["top1_ci95"]
            ax.bar(i, v, color=cols[i], width=0.7)
            ax.errorbar(i, v, yerr=[[v - 100 * lo], [100 * hi - v]], color="black", capsize=2, lw=0.8)
        ax.set_title(f"{m}: labelled top-1 %, {level} % CI", fontsize=7)
        ax.set_xticks(x, [""] * len(x))
        ax.set_ylim(0, 105)
        ax.grid(axis="y", lw=0.3)
        ax = axes[1][j]
        sims = [rows[n]["held_out"]["similarity"] for n in names]
        ax.bar(x, sims, color=cols, width=0.7)
        lo = min(sims)
        ax.set_ylim(max(0.0, lo - 0.6 * (1 - lo) - 0.002), 1.0)
        ax.set_title(f"{m}: held-out similarity", fontsize=7)
        ax.set_xticks(x, [SEED_ROWS.get(n, n).replace(", ", "\n", 1) for n in names], rotation=90, fontsize=6)
        ax.grid(axis="y", lw=0.3)
    fig.tight_layout()
    figure(g, "fig_seed", fig)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# TPU-MLIR's searchers side by side, and the fidelity checks

SEARCHERS = "experiments/results/tpu_mlir_searchers.json"
COVERAGE = "experiments/results/int8_coverage.json"
VS_TPU = "benchmarks/results/vs_tpu_mlir_cpu.json"
QTABLE_CPU = "benchmarks/results/qtable_cpu.json"
QTABLE_GPU = "benchmarks/results/qtable_gpu.json"
SEARCH_CPU = "benchmarks/results/search_cpu.json"
SEARCH_GPU = "benchmarks/results/search_gpu.json"
VARIANTS_CPU = "benchmarks/results/variants_cpu.json"
FORWARD_CPU = "benchmarks/results/forward_cpu.json"
FORWARD_GPU = "benchmarks/results/forward_gpu.json"
CALIBRATE_CPU = "benchmarks/results/calibrate_cpu.json"
GPU_VS_CPU = "benchmarks/results/gpu_vs_cpu.json"
INPUTS = "paper/inputs.json"


def searchers_table(g: Gen) -> None:
    """tab_searchers: TPU-MLIR's five searchers as qsens verbs on Lite0, and their macros."""
    rel = SEARCHERS
    g.flag("HaveSearchers", g.has(rel))
    if not g.has(rel):
        g.write("tab_searchers.tex", not_run("tpu_mlir_searchers", "experiments/tpu_mlir_searchers.py"))
        return
    d = g.load(rel)
    rows = []
    for tool in d["tools"]:
        p = ["tools", tool]
        tid = f"tab_searchers:{tool}"
        name, _, verb = tool.partition(" (")
        cells = [rf"\texttt{{{tex_escape(name)}}}",
                 g.num(f"{tid}:n_float_layers", rel, p + ["n_float_layers"], "int", "tab_searchers.tex"),
                 g.num(f"{tid}:similarity", rel, p + ["similarity"], "f4", "tab_searchers.tex"),
                 g.num(f"{tid}:cosine", rel, p + ["cosine"], "f4", "tab_searchers.tex"),
                 g.num(f"{tid}:top1_agreement", rel, p + ["top1_agreement"], "f3", "tab_searchers.tex"),
                 g.num(f"{tid}:top1", rel, p + ["labelled", "top1"], "pct1", "tab_searchers.tex") + " / "
                 + g.num(f"{tid}:top5", rel, p + ["labelled", "top5"], "pct1", "tab_searchers.tex"),
                 g.num(f"{tid}:wall_s", rel, p + ["wall_s"], "s", "tab_searchers.tex")]
        rows.append(cells)
    rows.append(["FP32", "--", "1", "1", "1",
                 g.num("tab_searchers:fp32:top1", rel, ["fp32_labelled", "top1"], "pct1", "tab_searchers.tex") + " / "
                 + g.num("tab_searchers:fp32:top5", rel, ["fp32_labelled", "top5"], "pct1", "tab_searchers.tex"), ""])
    g.write("tab_searchers.tex", tabular("lrrrrrr", ["TPU-MLIR tool (as qsens verb)", "float", "similarity", "cosine",
                                                     "top-1 agr.", r"labelled top-1/5 \%", "wall s"], rows))
    t = ["tools", "run_sensitive_layer (qsens search)"]
    g.macro("SearchersSensFloat", rel, t + ["n_float_layers"], "int")
    g.macro("SearchersLabelledN", rel, ["fp32_labelled", "n"], "int")
    g.macro("SearchersExpectedCos", rel, ["expected_cos"], "str")
    q = ["tools", "run_qtable (qsens qtable)"]
    g.macro("SearchersQtableFloat", rel, q + ["n_float_layers"], "int")
    g.macro("SearchersQtableSim", rel, q + ["similarity"], "f4")
    sq = ["tools", "search_qtable (qsens calibrate --search)"]
    g.macro("SearchersSqFloat", rel, sq + ["n_float_layers"], "int")
    g.macro("SearchersSqSim", rel, sq + ["similarity"], "f4")
    g.macro("SearchersSqTopOne", rel, sq + ["labelled", "top1"], "pct1")
    g.macro("SearchersFpTopOne", rel, ["fp32_labelled", "top1"], "pct1")
    fs = ["tools", "fast_search (qsens calibrate --search)"]
    g.macro("SearchersFastFloat", rel, fs + ["n_float_layers"], "int")
    g.macro("SearchersFastSim", rel, fs + ["similarity"], "f4")


COVERAGE_NETS = ("mbv3s", "yolo5n", "fpn", "gen_const", "gen_wconst")


def fidelity_table(g: Gen) -> None:
    """tab_fidelity: qsens vs TPU-MLIR 1.23 on the reference nets (int8_coverage) and Lite0 (vs_tpu_mlir)."""
    g.flag("HaveCoverage", g.has(COVERAGE))
    g.flag("HaveVsTpu", g.has(VS_TPU))
    g.flag("HaveQtableBench", g.has(QTABLE_CPU))
    rows = []
    if g.has(COVERAGE):
        rel, tpu = COVERAGE, "tpu_mlir_1.23"
        d = g.load(rel)
        for net in COVERAGE_NETS:
            if net not in d["after"] or net not in d[tpu]:
                continue
            a, t = ["after", net], [tpu, net]
            tid = f"tab_fidelity:{net}"
            same = d["after"][net]["float_layers"] == d[tpu][net]["float_layers"]
            same_set = sorted(d["after"][net]["float_layers"]) == sorted(d[tpu][net]["float_layers"])
            rows.append([rf"\texttt{{{tex_escape(net)}}}",
                         g.num(f"{tid}:n_ops", rel, a + ["n_ops"], "int", "tab_fidelity.tex") + " / "
                         + g.num(f"{tid}:tpu_n_ops", rel, t + ["n_ops"], "int", "tab_fidelity.tex"),
                         g.num(f"{tid}:f32_ops", rel, a + ["f32_ops"], "int", "tab_fidelity.tex", "len") + " / "
                         + g.num(f"{tid}:tpu_f32_ops", rel, t + ["f32_ops"], "int", "tab_fidelity.tex", "len"),
                         g.num(f"{tid}:int8", rel, a + ["int8_similarity"], "f6", "tab_fidelity.tex") + " / "
                         + g.num(f"{tid}:tpu_int8", rel, t + ["int8_similarity"], "f6", "tab_fidelity.tex"),
                         g.num(f"{tid}:mix", rel, a + ["mix_similarity"], "f6", "tab_fidelity.tex") + " / "
                         + g.num(f"{tid}:tpu_mix", rel, t + ["mix_similarity"], "f6", "tab_fidelity.tex"),
                         "same, same order" if same else ("same set" if same_set else "differ")])
    if g.has(VS_TPU):
        rel = VS_TPU
        d = g.load(rel)
        tid = "tab_fidelity:efficientnet_lite0"
        rows.append([r"\texttt{efficientnet\_lite0} (TorchScript export)", "--", "--",
                     g.num(f"{tid}:int8", rel, ["qsens", "warm", "int8_similarity"], "f6", "tab_fidelity.tex") + " / "
                     + g.num(f"{tid}:tpu_int8", rel, ["tpu_mlir", "int8_similarity"], "f6", "tab_fidelity.tex"),
                     g.num(f"{tid}:mix", rel, ["qsens", "warm", "mix_similarity"], "f6", "tab_fidelity.tex") + " / "
                     + g.num(f"{tid}:tpu_mix", rel, ["tpu_mlir", "mix_similarity"], "f6", "tab_fidelity.tex"),
                     "same" if d["same_float_layers"] else "differ"])
    g.write("tab_fidelity.tex", tabular("lrrrrl", ["net", "ops", "F32 ops", "all-INT8 similarity",
                                                   "MIX similarity", "float layers"], rows)
            if rows else not_run("int8_coverage", "experiments/int8_coverage.py"))
    g.macro("TpuMlirVersion", VS_TPU, ["tpu_mlir", "version"], "str")
    g.macro("CoverageBeforeMbvIntEight", COVERAGE, ["before", "mbv3s", "int8_similarity"], "f6")
    g.macro("CoverageBeforeMbvFThirtyTwo", COVERAGE, ["before", "mbv3s", "f32_ops"], "int", "len")
    g.macro("CoverageAfterMbvFThirtyTwo", COVERAGE, ["after", "mbv3s", "f32_ops"], "int", "len")
    g.macro("CoverageAfterMbvIntEight", COVERAGE, ["after", "mbv3s", "int8_similarity"], "f6")
    # run_qtable vs qsens qtable (same table, same images)
    g.macro("QtableTpuIntEightCos", QTABLE_CPU, ["tpu_mlir", "all_int8_cos"], "f6")
    g.macro("QtableTpuMixCos", QTABLE_CPU, ["tpu_mlir", "mix_outputs_cos"], "f6")
    g.macro("QtableTpuFloat", QTABLE_CPU, ["tpu_mlir", "float_layers"], "int", "len")
    g.macro("QtableQsensReportedMix", QTABLE_CPU, ["qsens", "warm", "reported_mix_cos"], "f6")
    g.macro("QtableQsensTrueMix", QTABLE_CPU, ["qsens", "warm", "true_mix_cos"], "f6")
    g.macro("QtableImages", QTABLE_CPU, ["images"], "int")
    g.macro("GpuCpuMaxLossDiff", GPU_VS_CPU, ["max_loss_diff"], "sci")
    g.flag("HaveGpuVsCpu", g.has(GPU_VS_CPU))
    g.flag("GpuCpuSameLayers", g.has(GPU_VS_CPU) and g.load(GPU_VS_CPU)["same_float_layers"])


# ---------------------------------------------------------------------------------------------------------------
# search variants (compare_variants)

CV = "experiments/results/compare_variants"
CV_MODELS = {"efficientnet_lite0": "LiteZero", "efficientnet_lite2": "LiteTwo", "mnist_mbv2": "Mnist",
             "mtcnn_pnet": "PNet", "mtcnn_rnet": "RNet", "mtcnn_onet": "ONet"}
TOOL_LABELS = {"sensitive": "TPU-MLIR top-N, new table",
               "sensitive (base table)": "TPU-MLIR top-N, base table",
               "auto_n (sensitive table)": r"\texttt{auto\_n}, on the new table"}


def tool_label(tool: str) -> str:
    """How a compare_variants tool is named in the tables."""
    return TOOL_LABELS.get(tool, rf"\texttt{{{tex_escape(tool)}}}")


def cv_rel(model: str) -> str:
    """The compare_variants results file of ``model``."""
    return f"{CV}/{model}.json"


def variants_lite0_table(g: Gen) -> None:
    """tab_variants_lite0: every search's similarity at k float layers on Lite0, its cost; the variants' macros."""
    rel = cv_rel("efficientnet_lite0")
    g.flag("HaveVariantsLiteZero", g.has(rel))
    if not g.has(rel):
        g.write("tab_variants_lite0.tex", not_run("compare_variants", "experiments/compare_variants.py"))
        return
    d = g.load(rel)
    ks = [0, 1, 3, 5, d["max_k"]]
    order = ["sensitive (base table)", "auto_n", "auto_n_ordered", "neighbour", "leave_one_out", "grad_screen",
             "cost_aware", "sensitive", "auto_n (sensitive table)", "threshold_grid", "threshold_optax"]
    tools = [t for t in order if t in d["tools"]] + [t for t in d["tools"] if t not in order and
                                                       "curve" in d["tools"][t]]
    rows = []
    for t in tools:
        if t == "sensitive":
            rows.append(r"\midrule")
        p = ["tools", t]
        tid = f"tab_variants_lite0:{t}"
        cells = [tool_label(t)]
        for k in ks:
            cells.append(g.num(f"{tid}:at{k}", rel, p + ["curve", "search", k], "f4", "tab_variants_lite0.tex"))
        cells.append(g.num(f"{tid}:n_evaluations", rel, p + ["n_evaluations"], "int", "tab_variants_lite0.tex"))
        cells.append(g.num(f"{tid}:search_s", rel, p + ["search_s"], "s", "tab_variants_lite0.tex"))
        rows.append(cells)
    g.write("tab_variants_lite0.tex", tabular("l" + "r" * (len(ks) + 2), ["search"] + [f"@{k}" for k in ks]
                                              + ["exact evals", "search s"], rows))
    # prose macros
    tt = ["tools"]
    g.macro("VarLiteZeroMaxK", rel, ["max_k"], "int")
    g.macro("VarLiteZeroImages", rel, ["images"], "int")
    g.macro("VarLiteZeroInference", rel, ["inference"], "int")
    g.macro("VarLiteZeroHeldOut", rel, ["held_out"], "int")
    g.macro("VarLiteZeroIntEight", rel, ["int8", "search", "similarity"], "f4")
    g.macro("VarSensSearchS", rel, tt + ["sensitive", "search_s"], "s")
    g.macro("VarAutoNSearchS", rel, tt + ["auto_n", "search_s"], "s")
    g.macro("VarAutoNOrderedSearchS", rel, tt + ["auto_n_ordered", "search_s"], "s")
    g.macro("VarAutoNEvals", rel, tt + ["auto_n", "n_evaluations"], "int")
    g.macro("VarSensEvals", rel, tt + ["sensitive", "n_evaluations"], "int")
    for k, kw in ((5, "Five"), (10, "Ten")):
        g.macro(f"VarSensBaseAt{kw}", rel, tt + ["sensitive (base table)", "curve", "search", k], "f4")
        g.macro(f"VarAutoNAt{kw}", rel, tt + ["auto_n", "curve", "search", k], "f4")
        g.macro(f"VarSensAt{kw}", rel, tt + ["sensitive", "curve", "search", k], "f4")
        g.macro(f"VarAutoNSensAt{kw}", rel, tt + ["auto_n (sensitive table)", "curve", "search", k], "f4")
        g.macro(f"VarLooAt{kw}", rel, tt + ["leave_one_out", "curve", "search", k], "f4")
        g.macro(f"VarGridAt{kw}", rel, tt + ["threshold_grid", "curve", "search", k], "f4")
        g.macro(f"VarOptaxAt{kw}", rel, tt + ["threshold_optax", "curve", "search", k], "f4")
        g.macro(f"VarCostAt{kw}", rel, tt + ["cost_aware", "curve", "search", k], "f4")
    g.macro("VarGridIntEight", rel, tt + ["threshold_grid", "int8_new_table"], "f4")
    g.macro("VarOptaxIntEight", rel, tt + ["threshold_optax", "int8_new_table"], "f4")
    g.macro("VarGridSearchS", rel, tt + ["threshold_grid", "search_s"], "s")
    g.macro("VarOptaxSearchS", rel, tt + ["threshold_optax", "search_s"], "s")
    g.macro("VarGradSearchS", rel, tt + ["grad_screen", "search_s"], "s")
    g.macro("VarGradCompileS", rel, tt + ["grad_screen", "compile", "compile_s"], "s")
    g.macro("VarGradEvals", rel, tt + ["grad_screen", "n_evaluations"], "int")
    g.macro("VarLooEvals", rel, tt + ["leave_one_out", "n_evaluations"], "int")
    g.macro("VarGradOverSens", rel, ["time_ratio", "grad_screen_over_sensitive_search"], "f2")
    g.macro("VarCostFirst", rel, tt + ["cost_aware", "order", 0], "str")
    g.macro("VarLooHeldAtFive", rel, tt + ["leave_one_out", "at", "5", "held_out", "similarity"], "f4")
    g.macro("VarSensBaseHeldAtFive", rel, tt + ["sensitive (base table)", "at", "5", "held_out", "similarity"], "f4")
    g.macro("VarSensSearchAtFive", rel, tt + ["sensitive", "at", "5", "search", "similarity"], "f4")
    g.macro("VarIntEightHeld", rel, ["int8", "held_out", "similarity"], "f4")
    reach = f"{CV}/efficientnet_lite0_reach.json"
    g.flag("HaveReach", g.has(reach))
    g.macro("ReachTarget", reach, ["target"], "f2")
    for row, short in (("base table", "Base"), ("sensitive table", "Sens")):
        g.macro(f"Reach{short}TopN", reach, ["rows", row, "top_n_k"], "int")
        g.macro(f"Reach{short}AutoN", reach, ["rows", row, "auto_n_k"], "int")
        g.macro(f"Reach{short}AutoNSearchS", reach, ["rows", row, "auto_n_search_s"], "s")
    reach2 = f"{CV}/efficientnet_lite2_reach.json"  # --reach --skip_auto_n: the top-N order only
    g.flag("HaveReachLiteTwo", g.has(reach2))
    for row, short in (("base table", "Base"), ("sensitive table", "Sens")):
        g.macro(f"ReachLiteTwo{short}TopN", reach2, ["rows", row, "top_n_k"], "int")


def variants_models_table(g: Gen) -> None:
    """tab_variants_models: Lite2 at 5 float layers and the float layers each search needs on MTCNN."""
    present = [m for m in CV_MODELS if g.has(cv_rel(m))]
    for m, short in CV_MODELS.items():
        if m != "efficientnet_lite0":  # (flagged with its table)
            g.flag(f"HaveVariants{short}", m in present)
    others = [m for m in present if m != "efficientnet_lite0"]
    if not others:
        g.write("tab_variants_models.tex", not_run("compare_variants", "experiments/compare_variants.py"))
        return
    tools: list[str] = []
    for m in others:
        tools += [t for t, v in g.load(cv_rel(m))["tools"].items() if "curve" in v and t not in tools]
    header, cols = ["search"], []
    if "efficientnet_lite2" in others:
        header += ["Lite2 @5", "held-out"]
        cols += [("efficientnet_lite2", ["curve", "search", 5], "f4"), ("efficientnet_lite2", ["curve", "held_out", 5],
                                                                        "f4")]
    if "mnist_mbv2" in others:
        header += ["MNIST @5"]
        cols += [("mnist_mbv2", ["curve", "search", 5], "f5")]
    for m in others:
        if m.startswith("mtcnn"):
            key = "k_for_0.999"
            header.append(f"{m.removeprefix('mtcnn_').upper().replace('NET', 'Net')} "
                          + f"$k_{{{key.removeprefix('k_for_')}}}$")
            cols.append((m, [key], "int"))
    rows = []
    for t in tools:
        cells = [tool_label(t)]
        for m, path, kind in cols:
            rel = cv_rel(m)
            if t not in g.load(rel)["tools"]:
                cells.append("n/r")
                continue
            cells.append(g.num(f"tab_variants_models:{m}:{t}:{'/'.join(map(str, path))}", rel, ["tools", t] + path,
                               kind, "tab_variants_models.tex"))
        rows.append(cells)
    g.write("tab_variants_models.tex", tabular("l" + "r" * len(cols), header, rows))
    for m in others:
        short, rel = CV_MODELS[m], cv_rel(m)
        g.macro(f"Var{short}IntEight", rel, ["int8", "search", "similarity"], "f5")
    if "mtcnn_pnet" in others:
        rel = cv_rel("mtcnn_pnet")
        g.macro("VarPNetAutoNAtFive", rel, ["tools", "auto_n", "curve", "search", 5], "f4")
        g.macro("VarPNetSensBaseAtFive", rel, ["tools", "sensitive (base table)", "curve", "search", 5], "f4")
    for m in ("mtcnn_rnet", "mtcnn_onet"):
        if m in others:
            short, rel = CV_MODELS[m], cv_rel(m)
            g.macro(f"Var{short}GridIntEight", rel, ["tools", "threshold_grid", "int8_new_table"], "f5")
            g.macro(f"Var{short}OptaxIntEight", rel, ["tools", "threshold_optax", "int8_new_table"], "f5")
            g.macro(f"Var{short}GridK", rel, ["tools", "threshold_grid", "k_for_0.999"], "int")
            g.macro(f"Var{short}SensK", rel, ["tools", "sensitive", "k_for_0.999"], "int")
            g.macro(f"Var{short}AutoNK", rel, ["tools", "auto_n", "k_for_0.999"], "int")
            g.macro(f"Var{short}SensBaseK", rel, ["tools", "sensitive (base table)", "k_for_0.999"], "int")
    if "efficientnet_lite2" in others:
        rel = cv_rel("efficientnet_lite2")
        g.macro("VarLiteTwoSensAtFive", rel, ["tools", "sensitive (base table)", "curve", "search", 5], "f4")
        g.macro("VarLiteTwoLooAtFive", rel, ["tools", "leave_one_out", "curve", "search", 5], "f4")
        g.macro("VarLiteTwoGradOverSens", rel, ["time_ratio", "grad_screen_over_sensitive_search"], "f2")
        g.macro("VarLiteTwoAutoNAtTen", rel, ["tools", "auto_n", "curve", "search", 10], "f4")
        g.macro("VarLiteTwoSensBaseAtTen", rel, ["tools", "sensitive (base table)", "curve", "search", 10], "f4")
        g.macro("VarLiteTwoGridIntEight", rel, ["tools", "threshold_grid", "int8_new_table"], "f4")
        g.macro("VarLiteTwoOptaxIntEight", rel, ["tools", "threshold_optax", "int8_new_table"], "f4")
        g.macro("VarLiteTwoFastSearchSim", rel, ["tools", "fast_search", "result", "search", "similarity"], "f4")
        g.macro("VarLiteTwoFastSearchHeldOut", rel, ["tools", "fast_search", "result", "held_out", "similarity"], "f4")
        g.macro("VarLiteTwoFastSearchK", rel, ["tools", "fast_search", "float_layers"], "int", "len")
        g.macro("VarLiteTwoSearchQtableSim", rel, ["tools", "search_qtable", "result", "search", "similarity"], "f4")
        g.macro("VarLiteTwoSearchQtableK", rel, ["tools", "search_qtable", "float_layers"], "int", "len")


def tau_table(g: Gen) -> None:
    """tab_tau: rank agreement of the gradient screen and of leave-one-out, per model."""
    present = [m for m in CV_MODELS if g.has(cv_rel(m))]
    if not present:
        g.write("tab_tau.tex", not_run("compare_variants", "experiments/compare_variants.py"))
        return
    cols = [("kendall_tau", "grad_taylor_vs_leave_one_out", "f2"), ("kendall_tau", "grad_fisher_vs_leave_one_out", "f2"),
            ("kendall_tau", "leave_one_out_vs_leave_one_in", "f2"),
            ("overlap_top5", "grad_screen_vs_leave_one_out", "int"), ("overlap_top5", "leave_one_out_vs_sensitive", "int"),
            ("time_ratio", "grad_screen_over_sensitive_search", "f2")]
    rows = []
    for m in present:
        rel = cv_rel(m)
        rows.append([rf"\texttt{{{tex_escape(m)}}}"] + [g.num(f"tab_tau:{m}:{a}:{b}", rel, [a, b], k, "tab_tau.tex")
                                                        for a, b, k in cols])
    g.write("tab_tau.tex", tabular("lrrrrrr", ["model", r"$\tau$ taylor", r"$\tau$ fisher", r"$\tau$ LOO/LOI",
                                               "top-5 grad/LOO", "top-5 LOO/LOI", "grad / sens. time"], rows))
    rel = cv_rel("efficientnet_lite0")
    g.macro("TauLiteZeroTaylor", rel, ["kendall_tau", "grad_taylor_vs_leave_one_out"], "f2")
    g.macro("TauLiteZeroLoo", rel, ["kendall_tau", "leave_one_out_vs_leave_one_in"], "f2")
    g.macro("TauRNetTaylor", cv_rel("mtcnn_rnet"), ["kendall_tau", "grad_taylor_vs_leave_one_out"], "f2")


def variants_figure(g: Gen) -> None:
    """fig_variants: similarity on the search images vs the number of float layers, per search."""
    models = [m for m in ("efficientnet_lite0", "efficientnet_lite2", "mtcnn_pnet") if g.has(cv_rel(m))]
    if not models:
        g.write("fig_variants.tex", not_run("compare_variants", "experiments/compare_variants.py"))
        return
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(2.25 * len(models), 2.35), squeeze=False)
    styles = {"sensitive (base table)": ("black", "-", "o"), "sensitive": ("black", "--", "o"),
              "auto_n": ("#c0392b", "-", "s"), "auto_n (sensitive table)": ("#c0392b", "--", "s"),
              "auto_n_ordered": ("#e67e22", ":", "^"), "neighbour": ("#8e44ad", "-", "v"),
              "leave_one_out": ("#2e86c1", "-", "D"), "grad_screen": ("#16a085", ":", "x"),
              "cost_aware": ("#7f8c8d", "-", "."), "threshold_grid": ("#d4ac0d", "-", "P"),
              "threshold_optax": ("#d35400", "-", "*")}
    labels = {"sensitive": "top-N, new table", "sensitive (base table)": "top-N (TPU-MLIR), base table",
              "auto_n (sensitive table)": "auto_n, new table"}
    handles = {}
    for ax, m in zip(axes[0], models):
        d = g.load(cv_rel(m))
        for t, v in d["tools"].items():
            if "curve" not in v:
                continue
            c, ls, mk = styles.get(t, ("#999999", "-", "."))
            ys = v["curve"]["search"]
            (h,) = ax.plot(range(len(ys)), ys, color=c, ls=ls, marker=mk, ms=3, lw=1)
            handles.setdefault(labels.get(t, t), h)
        ax.set_title(f"{m} ({d['inference']} search images)", fontsize=7)
        ax.set_xlabel("float layers k")
        ax.grid(lw=0.3)
        ys_all = [y for v in d["tools"].values() if "curve" in v for y in v["curve"]["search"]]
        lo, hi = min(ys_all), max(ys_all)
        ax.set_ylim(lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))
    axes[0][0].set_ylabel("similarity (0.5+0.5 cos)")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, frameon=False, fontsize=6)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    figure(g, "fig_variants", fig)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# speed


def speed(g: Gen) -> None:
    """tab_speed, fig_speed and the speed macros (TPU-MLIR vs qsens, CPU and GPU)."""
    for rel, flag in ((SEARCH_CPU, "HaveSearchCpu"), (SEARCH_GPU, "HaveSearchGpu"), (QTABLE_GPU, "HaveQtableGpu"),
                      (VARIANTS_CPU, "HaveVariantsBench"), (FORWARD_CPU, "HaveForwardCpu"),
                      (FORWARD_GPU, "HaveForwardGpu"), (CALIBRATE_CPU, "HaveCalibrateBench")):
        g.flag(flag, g.has(rel))
    t = "tab_speed.tex"

    def cell(key, rel, path, kind="s"):
        return g.num(f"tab_speed:{key}", rel, path, kind, t) if g.has(rel) else "n/r"

    rows = [["sensitive-layer search, Lite0 TorchScript export (whole job)",
             cell("vs:tpu", VS_TPU, ["tpu_mlir", "wall_s"]), cell("vs:cold", VS_TPU, ["qsens", "cold", "wall_s"]),
             cell("vs:warm", VS_TPU, ["qsens", "warm", "wall_s"]), "--",
             cell("vs:speedup_warm", VS_TPU, ["speedup_warm"], "f1") + r"$\times$"],
            ["\\quad of which the search (\\texttt{run\\_sensitive\\_layer})",
             cell("vs:tpu_search", VS_TPU, ["tpu_mlir", "steps_s", "run_sensitive_layer.py"]), "--", "--", "--", ""],
            ["sensitive-layer search, Lite0 ONNX, demo job",
             "--", cell("search:cold", SEARCH_CPU, ["cold", "wall_s"]), cell("search:warm", SEARCH_CPU, ["warm", "wall_s"]),
             cell("search:gpu_warm", SEARCH_GPU, ["warm", "wall_s"]), ""],
            ["\\quad of which the search compute", "--", "--",
             cell("search:warm_compute", SEARCH_CPU, ["warm", "timings", "search_s"]),
             cell("search:gpu_warm_compute", SEARCH_GPU, ["warm", "timings", "search_s"]), ""],
            ["\\texttt{run\\_qtable} / \\texttt{qsens qtable}, Lite0, " + cell("qtable:images", QTABLE_CPU, ["images"], "int")
             + " images", cell("qtable:tpu", QTABLE_CPU, ["tpu_mlir", "run_qtable_wall_s"]),
             cell("qtable:cold", QTABLE_CPU, ["qsens", "cold", "wall_s"]),
             cell("qtable:warm", QTABLE_CPU, ["qsens", "warm", "wall_s"]),
             cell("qtable:gpu_warm", QTABLE_GPU, ["qsens", "warm", "wall_s"]),
             cell("qtable:speedup_warm", QTABLE_CPU, ["speedup_warm"], "f1") + r"$\times$"]]
    if not any(g.has(r) for r in (VS_TPU, SEARCH_CPU, SEARCH_GPU, QTABLE_CPU, QTABLE_GPU)):
        rows = None
    header = ["job", "TPU-MLIR", "CPU cold", "CPU warm", "GPU warm", "speed-up"]
    g.write(t, not_run("benchmarks", "benchmarks/") if rows is None else
            tabular("p{0.4\\linewidth}rrrrr", header, rows))
    m = g.macro
    m("VsTpuWall", VS_TPU, ["tpu_mlir", "wall_s"], "s")
    m("VsTpuSearch", VS_TPU, ["tpu_mlir", "steps_s", "run_sensitive_layer.py"], "s")
    m("VsQsensWarm", VS_TPU, ["qsens", "warm", "wall_s"], "s")
    m("VsQsensCold", VS_TPU, ["qsens", "cold", "wall_s"], "s")
    m("VsSpeedupWarm", VS_TPU, ["speedup_warm"], "f1")
    m("VsSpeedupCold", VS_TPU, ["speedup_cold"], "f1")
    m("VsQsensRss", VS_TPU, ["qsens", "warm", "peak_rss_mb"], "int")
    m("VsTpuIntEight", VS_TPU, ["tpu_mlir", "int8_similarity"], "f6")
    m("VsTpuMix", VS_TPU, ["tpu_mlir", "mix_similarity"], "f6")
    m("VsQsensIntEight", VS_TPU, ["qsens", "warm", "int8_similarity"], "f6")
    m("VsQsensMix", VS_TPU, ["qsens", "warm", "mix_similarity"], "f6")
    m("VsCores", VS_TPU, ["machine", "cores"], "int")
    m("VsImages", VS_TPU, ["images"], "int")
    m("VsInference", VS_TPU, ["inference"], "int")
    m("VsJax", VS_TPU, ["machine", "jax"], "str")
    m("SearchCpuWarm", SEARCH_CPU, ["warm", "wall_s"], "s")
    m("SearchCpuCold", SEARCH_CPU, ["cold", "wall_s"], "s")
    m("SearchCpuCompute", SEARCH_CPU, ["warm", "timings", "search_s"], "s")
    m("SearchCpuOverFloor", SEARCH_CPU, ["search_over_floor"], "f2")
    m("SearchCpuFloorS", SEARCH_CPU, ["flop_floor_s"], "s")
    m("SearchCpuCandidates", SEARCH_CPU, ["warm", "n_candidates"], "int")
    m("SearchCpuEvaluated", SEARCH_CPU, ["warm", "n_candidates_evaluated"], "int")
    m("SearchCpuExecutables", SEARCH_CPU, ["warm", "timings", "compile", "executables"], "int")
    m("SearchCpuConcatCompute", SEARCH_CPU, ["concat", "timings", "search_s"], "s")
    m("SearchGpuWarm", SEARCH_GPU, ["warm", "wall_s"], "s")
    m("SearchGpuCold", SEARCH_GPU, ["cold", "wall_s"], "s")
    m("SearchGpuCompute", SEARCH_GPU, ["warm", "timings", "search_s"], "s")
    m("SearchGpuOverFloor", SEARCH_GPU, ["search_over_floor"], "f1")
    m("SearchGpuDevice", SEARCH_GPU, ["machine", "device"], "str")
    m("QtableTpuWall", QTABLE_CPU, ["tpu_mlir", "run_qtable_wall_s"], "s")
    m("QtableQsensWarm", QTABLE_CPU, ["qsens", "warm", "wall_s"], "s")
    m("QtableQsensCold", QTABLE_CPU, ["qsens", "cold", "wall_s"], "s")
    m("QtableQsensSearch", QTABLE_CPU, ["qsens", "warm", "search_s"], "s")
    m("QtableGpuWarm", QTABLE_GPU, ["qsens", "warm", "wall_s"], "s")
    m("QtableBarWarm", QTABLE_CPU, ["bar_warm_s"], "int")
    m("ForwardCpuMs", FORWARD_CPU, ["qsens_s"], "ms")
    m("ForwardOrtMs", FORWARD_CPU, ["onnxruntime_s"], "ms")
    m("ForwardRatio", FORWARD_CPU, ["ratio"], "f2")
    m("ForwardBatch", FORWARD_CPU, ["batch"], "int")
    m("ForwardGpuMs", FORWARD_GPU, ["qsens_s"], "ms")
    m("ForwardMaxRelErr", FORWARD_CPU, ["max_rel_err"], "sci")
    m("CalibrateWall", CALIBRATE_CPU, ["images100", "wall_s"], "s")
    m("CalibrateRssRatio", CALIBRATE_CPU, ["rss_ratio_400_over_100"], "f2")
    m("GradColdRatio", VARIANTS_CPU, ["ratio_cold", "grad_screen_over_sensitive_search"], "f2")
    m("GradWarmRatio", VARIANTS_CPU, ["ratio_warm", "grad_screen_over_sensitive_search"], "f2")
    m("GradColdPass", VARIANTS_CPU, ["cold", "grad_screen", "gradient_pass_s"], "s")
    m("GradWarmPass", VARIANTS_CPU, ["warm", "grad_screen", "gradient_pass_s"], "s")
    m("GradColdCompile", VARIANTS_CPU, ["cold", "grad_screen", "compile", "compile_s"], "s")
    m("GradSensColdSearch", VARIANTS_CPU, ["cold", "sensitive", "search_s"], "s")
    m("GradTarget", INPUTS, ["targets", "grad_screen_over_sensitive_search"], "f1")
    speed_figure(g)


def speed_figure(g: Gen) -> None:
    """fig_speed: wall times of TPU-MLIR and qsens (CPU cold/warm, GPU warm), log scale."""
    bars = []  # (group, label, rel, path)
    for label, rel, path in (("TPU-MLIR: transform + calibration + search", VS_TPU, ["tpu_mlir", "wall_s"]),
                             ("qsens search, CPU, cold cache", VS_TPU, ["qsens", "cold", "wall_s"]),
                             ("qsens search, CPU, warm cache", VS_TPU, ["qsens", "warm", "wall_s"]),
                             ("qsens search (demo job), H200 GPU, warm", SEARCH_GPU, ["warm", "wall_s"])):
        if g.has(rel):
            bars.append((0, label, g.get(rel, path)))
    for label, rel, path in (("TPU-MLIR run_qtable", QTABLE_CPU, ["tpu_mlir", "run_qtable_wall_s"]),
                             ("qsens qtable, CPU, cold cache", QTABLE_CPU, ["qsens", "cold", "wall_s"]),
                             ("qsens qtable, CPU, warm cache", QTABLE_CPU, ["qsens", "warm", "wall_s"]),
                             ("qsens qtable, H200 GPU, warm", QTABLE_GPU, ["qsens", "warm", "wall_s"])):
        if g.has(rel):
            bars.append((1, label, g.get(rel, path)))
    if not bars:
        g.write("fig_speed.tex", not_run("benchmarks", "benchmarks/"))
        return
    plt = _plt()
    groups = sorted({b[0] for b in bars})
    fig, axes = plt.subplots(1, len(groups), figsize=(3.35 * len(groups), 1.55), squeeze=False)
    titles = {0: "sensitive-layer search, Lite0: wall s", 1: "run_qtable, Lite0: wall s"}
    for ax, gr in zip(axes[0], groups):
        bs = [b for b in bars if b[0] == gr][::-1]
        ys = range(len(bs))
        cols = ["#c0392b" if b[1].startswith("TPU-MLIR") else ("#16a085" if "GPU" in b[1] else "#2e86c1") for b in bs]
        ax.barh(list(ys), [b[2] for b in bs], color=cols)
        for y, b in zip(ys, bs):
            ax.text(b[2] * 1.08, y, fmt(b[2], "s"), va="center", fontsize=6.5)
        ax.set_yticks(list(ys), [b[1] for b in bs], fontsize=6.5)
        ax.set_xscale("log")
        ax.set_xlim(min(b[2] for b in bs) / 2, max(b[2] for b in bs) * 4)
        ax.set_title(titles[gr])
        ax.grid(axis="x", lw=0.3)
    fig.tight_layout()
    figure(g, "fig_speed", fig)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# experiments 2-5: rendered when their results exist

SWEEPS = {"accuracy_sweep": "accuracy sweep", "ranking_stability": "ranking stability",
          "calibration_ablation": "calibration ablation", "speed_scaling": "speed scaling"}


def calibration_ablation(g: Gen, files: list[str]) -> str:
    """sec_calibration_ablation: one table (every calibration table of one pass scored as an all-INT8 network, one
    column group per model) and a sentence per model naming the best and the worst table."""
    tex = "sec_calibration_ablation.tex"
    data = [(f, g.load(f)) for f in files]
    names = list(dict.fromkeys(n for _, d in data for n in d["rows"]))
    text, header = [], ["table (histogram, method)"]
    for f, d in data:
        model = d["model"]
        tid = f"tab_calibration_ablation:{model}"
        header += [rf"\texttt{{{tex_escape(model)}}} sim.", r"top-1 \% [\CILevel\,\% CI]"]
        best = max(d["rows"], key=lambda k: d["rows"][k]["held_out"]["similarity"])
        worst = min(d["rows"], key=lambda k: d["rows"][k]["held_out"]["similarity"])
        n_cal = g.num(f"{tid}:calibration_images", f, ["data", "calibration_images"], "int", tex)
        n_tune = g.num(f"{tid}:tune_num", f, ["data", "tune_num"], "int", tex)
        n_held = g.num(f"{tid}:held_out_n", f, ["data", "held_out_n"], "int", tex)
        text.append(rf"On \texttt{{{tex_escape(model)}}} ({n_cal} calibration images, tuner on {n_tune}, {n_held} held-out "
                    rf"images) the best all-INT8 table is \texttt{{{tex_escape(best)}}} (similarity "
                    + g.num(f"{tid}:{best}:similarity", f, ["rows", best, "held_out", "similarity"], "f5", tex)
                    + rf"), the worst \texttt{{{tex_escape(worst)}}} ("
                    + g.num(f"{tid}:{worst}:similarity", f, ["rows", worst, "held_out", "similarity"], "f5", tex) + ").")
    def same_as_untuned(name: str) -> bool:  # a _tune table the tuner left equal to its .1 table, in every model
        base = name.removesuffix("_tune") + ".1"
        return name.endswith("_tune") and all(base in d["rows"] and d["rows"][name] == d["rows"][base]
                                              for _, d in data if name in d["rows"])

    omitted = [n for n in names if same_as_untuned(n)]
    rows = []
    for name in names:
        if name in omitted:
            continue
        cells = [rf"\texttt{{{tex_escape(name)}}}"]
        for f, d in data:
            tid = f"tab_calibration_ablation:{d['model']}"
            if name not in d["rows"]:
                cells += ["n/r", "n/r"]
                continue
            p = ["rows", name]
            cells.append(g.num(f"{tid}:{name}:similarity", f, p + ["held_out", "similarity"], "f5", tex))
            lab = d["rows"][name]["labelled"]
            cells.append("--" if not lab else (
                g.num(f"{tid}:{name}:top1", f, p + ["labelled", "top1"], "pct1", tex) + " ["
                + g.num(f"{tid}:{name}:top1_lo", f, p + ["labelled", "top1_ci95", 0], "pct1", tex) + ", "
                + g.num(f"{tid}:{name}:top1_hi", f, p + ["labelled", "top1_ci95", 1], "pct1", tex) + "]"))
        rows.append(cells)
    out = [" ".join(text),
           r"\begin{table}[tbp]\centering\footnotesize",
           tabular("l" + "rr" * len(data), header, rows).strip(),
           r"\caption{Calibration ablation (\texttt{experiments/results/calibration\_ablation/}): every table of one "
           r"calibration pass (histograms v2 or v1; \texttt{.1} untuned, \texttt{\_tune} after TPU-MLIR's tuner) "
           r"scored as an all-INT8 network: held-out similarity and labelled top-1. n/r: not run."
           + ("" if not omitted else " Not shown, because the tuner returned them unchanged (equal scores): "
              + ", ".join(rf"\texttt{{{tex_escape(n)}}}" for n in omitted) + ".") + "}",
           r"\label{tab:calibration}", r"\end{table}"]
    return "\n".join(out) + "\n"


def accuracy_sweep(g: Gen, files: list[str]) -> str:
    """sec_accuracy_sweep: one table (per model and order of float layers: the first k above each target, the
    held-out similarity at 5 and at the last k, labelled top-1 at 0 and at the last k), one figure, one sentence
    per model on the width of the labelled intervals."""
    tex = "sec_accuracy_sweep.tex"
    data = [(f, g.load(f)) for f in files]
    # the targets of every file, in order (a file run with other targets shows n/r in the others' columns)
    targets = sorted(set(t for _, d in data for t in d["meta"]["config"]["targets"]))
    t_txt = []
    for t in targets:
        f, d = next((f, d) for f, d in data if t in d["meta"]["config"]["targets"])
        i = d["meta"]["config"]["targets"].index(t)
        t_txt.append(g.num(f"tab_accuracy_sweep:target:{t}", f, ["meta", "config", "targets", i], "g", tex))
    kmax = min(d["meta"]["config"]["max_k"] for _, d in data)
    fk = next(f for f, d in data if d["meta"]["config"]["max_k"] == kmax)
    kmax_txt = g.num("tab_accuracy_sweep:max_k", fk, ["meta", "config", "max_k"], "int", tex)
    ks = [k for k in (5, kmax) if k <= kmax]
    ncol = 2 + len(targets) + len(ks) + 2
    rows, text, curves, variants = [], [], [], []
    for f, d in data:
        model = d["model"]
        tid = f"tab_accuracy_sweep:{model}"
        n_held = g.num(f"{tid}:held_out_n", f, ["data", "held_out_n"], "int", tex)
        n_lab = g.num(f"{tid}:labelled_n", f, ["data", "labelled_n"], "int", tex)
        if rows:
            rows.append(r"\midrule")
        rows.append(rf"\multicolumn{{{ncol}}}{{l}}{{\textbf{{\texttt{{{tex_escape(model)}}}}}: held-out {n_held} images "
                    rf"of \texttt{{{tex_escape(str(d['data']['held_out']))}}}, labelled {n_lab} of "
                    rf"\texttt{{{tex_escape(str(d['data']['labelled']))}}}}} \\")
        for name, o in d["orders"].items():
            sim = o["held_out"]["similarity"]
            curves.append((model, name, o["kind"], sim))
            if o["kind"] == "variant":  # the variants' orders: in the JSON and the figure (page budget)
                variants.append(name)
                continue
            p = ["orders", name]
            cells = [rf"\texttt{{{tex_escape(name)}}}", tex_escape(o["table"])]
            cells += [g.num(f"{tid}:{name}:k>{t}", f, p + ["first_k_above", str(t)], "int", tex)
                      if str(t) in o["first_k_above"] else "n/r" for t in targets]
            cells += [g.num(f"{tid}:{name}:sim@{k}", f, p + ["held_out", "similarity", k], "f5", tex)
                      if k < len(sim) else "--" for k in ks]
            top1 = o.get("labelled", {}).get("top1")
            cells += [g.num(f"{tid}:{name}:top1@{k}", f, p + ["labelled", "top1", k], "pct1", tex)
                      if top1 and k < len(top1) else "--" for k in (0, ks[-1])]
            rows.append(cells)
        lab0 = d["orders"]["sensitive (original table)"].get("labelled")
        if lab0:
            p0 = ["orders", "sensitive (original table)", "labelled", "top1_ci95", 0]
            text.append(rf"On \texttt{{{tex_escape(model)}}} the \CILevel\,\% interval of the all-INT8 labelled top-1 is ["
                        + g.num(f"{tid}:top1_ci_lo", f, p0 + [0], "pct1", tex) + ", "
                        + g.num(f"{tid}:top1_ci_hi", f, p0 + [1], "pct1", tex) + rf"]\,\% on {n_lab} images.")
    text.append("Differences in labelled top-1 between orders inside those widths are not resolved.")
    if variants:
        text.append("The orders of the search variants (" + ", ".join(
            rf"\texttt{{{tex_escape(v)}}}" for v in dict.fromkeys(variants)) + ") were scored the same way; they are "
            r"left out of the table for space and are in the JSON.")
    out = [" ".join(text),
           r"\begin{table}[tbp]\centering\scriptsize",
           tabular("ll" + "r" * (ncol - 2), ["order", "table"] + [f"$k_{{>{t}}}$" for t in t_txt]
                   + [f"sim @{k}" for k in ks] + [r"top-1 \% @0", f"@{kmax_txt}"], rows).strip(),
           rf"\caption{{Accuracy sweep (\texttt{{experiments/results/accuracy\_sweep/}}): for each order of float "
           rf"layers, the first $k$ whose held-out similarity exceeds each target (--: not within {kmax_txt}; n/r: "
           r"target not in that run), the "
           r"held-out similarity with $k$ float layers and the labelled top-1 with none and with the most.}",
           r"\label{tab:sweep}", r"\end{table}"]
    models = list(dict.fromkeys(c[0] for c in curves))
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(3.35 * len(models), 2.2), squeeze=False)
    style = {"sensitive": dict(lw=1.8, ls="-"), "baseline": dict(lw=0.8, ls="--"), "variant": dict(lw=0.8, ls=":")}
    for ax, model in zip(axes[0], models):
        for m, name, kind, sim in curves:
            if m == model:
                ax.plot(range(len(sim)), [max(1 - s, 1e-7) for s in sim], marker="o", ms=2, label=name,
                        **style.get(kind, {}))
        ax.set_yscale("log")
        ax.set_title(f"{model}: held-out 1 - similarity", fontsize=7)
        ax.set_xlabel("float layers k")
        ax.grid(lw=0.3)
        ax.legend(fontsize=4.5, ncol=2)
    fig.tight_layout()
    figure(g, "fig_accuracy_sweep", fig)
    plt.close(fig)
    # the curves are in generated/fig_accuracy_sweep.png (not placed in the paper: the page budget)
    out[0] += (r" The curves are plotted in \texttt{paper/generated/fig\_accuracy\_sweep.png}.")
    return "\n".join(out) + "\n"


def ranking_stability(g: Gen, files: list[str]) -> str:
    """sec_ranking_stability: one table (per model: Kendall tau and identical choices between disjoint image
    subsets, nested prefixes, and bootstrap resamples of the search images) and a sentence per model on its
    top-ranked op."""
    tex = "sec_ranking_stability.tex"
    rows, text = [], []
    for f in files:
        d = g.load(f)
        model = d["model"]
        tid = f"tab_ranking_stability:{model}"
        if rows:
            rows.append(r"\midrule")
        for grp, label in (("subsets", "disjoint subsets"), ("prefixes", "nested prefixes")):
            t, c1, c5 = ["kendall_tau", grp], ["chosen", grp, "1"], ["chosen", grp, "5"]
            n = g.num(f"{tid}:{grp}:n_pairs", f, c5 + ["n_pairs"], "int", tex)
            rows.append([rf"\texttt{{{tex_escape(model)}}}" if grp == "subsets" else "", label, n]
                        + [g.num(f"{tid}:{grp}:tau_{k}", f, t + [k], "f2", tex) for k in ("min", "mean", "max")]
                        + [g.num(f"{tid}:{grp}:top1_same", f, c1 + ["identical_pairs"], "int", tex) + "/" + n,
                           g.num(f"{tid}:{grp}:top5_same", f, c5 + ["identical_pairs"], "int", tex) + "/" + n,
                           g.num(f"{tid}:{grp}:jaccard", f, c5 + ["mean_jaccard"], "f2", tex),
                           g.num(f"{tid}:{grp}:distinct", f, c5 + ["distinct"], "int", tex)])
        b = ["bootstrap"]
        nb = g.num(f"{tid}:n_boot", f, b + ["n_boot"], "int", tex)
        rows.append(["", f"bootstrap ({nb})", "--",
                     g.num(f"{tid}:boot_tau_lo", f, b + ["tau_vs_full", "ci95", 0], "f2", tex),
                     g.num(f"{tid}:boot_tau_median", f, b + ["tau_vs_full", "median"], "f2", tex),
                     g.num(f"{tid}:boot_tau_hi", f, b + ["tau_vs_full", "ci95", 1], "f2", tex),
                     g.num(f"{tid}:boot_top1", f, b + ["top1_identical_fraction"], "pct0", tex) + r"\,\%",
                     g.num(f"{tid}:boot_top5", f, b + ["top5_identical_fraction"], "pct0", tex) + r"\,\%",
                     g.num(f"{tid}:boot_jaccard", f, b + ["top5_mean_jaccard_vs_full"], "f2", tex), "--"])
        top = ["per_op", 0]
        sent = (rf"On \texttt{{{tex_escape(model)}}} the most sensitive op, \texttt{{{tex_escape(d['per_op'][0]['op'])}}}, "
                "is ranked first in " + g.num(f"{tid}:top_p1", f, top + ["p_chosen_top1"], "pct0", tex)
                + r"\,\% of the bootstrap resamples of the search images")
        if "vs_reference" in d["kendall_tau"]:
            r = d["kendall_tau"]["vs_reference"]
            ref = (g.num(f"{tid}:ref_start", f, ["data", "reference", 0], "int", tex) + "--"
                   + g.num(f"{tid}:ref_end", f, ["data", "reference", 1], "int", tex))
            sent += (rf"; against the ranking on the images {ref} of the shuffle, Kendall $\tau$ is "
                     + ", ".join(rf"{tex_escape(n)} " + g.num(f"{tid}:ref:{n}", f, ["kendall_tau", "vs_reference", n],
                                                               "f2", tex) for n in r))
        text.append(sent + ".")
    out = [" ".join(text),
           r"\begin{table}[tbp]\centering\footnotesize",
           tabular("llrrrrrrrr", ["model", "compared", "pairs", r"$\tau$ min", r"$\tau$ mean", r"$\tau$ max",
                                  "top-1 same", "top-5 same", "Jaccard", "distinct"], rows).strip(),
           r"\caption{Ranking stability (\texttt{experiments/results/ranking\_stability/}): Kendall $\tau$ between the "
           r"per-op loss vectors of disjoint image subsets and of nested prefixes of the shuffle (each op alone in "
           r"INT8 at the search's new table), how many pairs choose the same first layer and the same five, the mean "
           r"Jaccard index of the five and how many distinct sets of five occur (``distinct''). Bootstrap row: resamples of the search "
           r"images against all of them; its $\tau$ columns give the median and the bounds of the \CILevel\,\% "
           r"interval.}",
           r"\label{tab:stability}", r"\end{table}"]
    return "\n".join(out) + "\n"


def speed_scaling(g: Gen, files: list[str]) -> str:
    """sec_speed_scaling: the search time of every point of the ops, images and strategy sweeps against its FLOP
    floor (one table) and the fitted exponents (one sentence)."""
    tex = "sec_speed_scaling.tex"
    f = files[0]
    d = g.load(f)
    rows = []
    sweeps = [("ops", ["ops_sweep"], d["ops_sweep"])]
    sweeps += [("images", ["image_sweep", k], v) for k, v in d["image_sweep"].items()]
    sweeps += [("strategy", ["strategy_sweep"], d["strategy_sweep"])]
    for label, base, pts in sweeps:
        if rows:
            rows.append(r"\midrule")
        for i, q in enumerate(pts):
            p = base + [i]
            key = f"tab_speed_scaling:{'/'.join(map(str, p))}"
            rows.append([label if i == 0 else "", rf"\texttt{{{tex_escape(q['model'])}}}",
                         g.num(f"{key}:ops", f, p + ["ops"], "int", tex),
                         g.num(f"{key}:inference", f, p + ["inference"], "int", tex), tex_escape(q["strategy"]),
                         g.num(f"{key}:search_s", f, p + ["search_s"], "s", tex),
                         g.num(f"{key}:flop_floor_s", f, p + ["flop_floor_s"], "s", tex),
                         g.num(f"{key}:over_floor", f, p + ["search_over_floor"], "f2", tex),
                         g.num(f"{key}:compile_s", f, p + ["compile_s"], "s", tex),
                         g.num(f"{key}:load", f, p + ["load_before"], "f1", tex)])
    fits = d["fits"]
    parts = [r"The search time grows as $\mathrm{ops}^{"
             + g.num("speed_scaling:b_ops", f, ["fits", "b_ops"], "f2", tex) + "}$ over the models of the ops "
             "sweep (whose ops also differ in cost, so this exponent mixes depth and width)"]
    for k, b in fits["b_images"].items():
        if b is not None:
            parts.append(rf"as $\mathrm{{images}}^{{{g.num(f'speed_scaling:b_images:{k}', f, ['fits', 'b_images', k], 'f2', tex)}}}$"
                         rf" on \texttt{{{tex_escape(k)}}}")
    text = (", ".join(parts) + r" (least squares in log--log), and TPU-MLIR's cost shape, every candidate from the "
            "input, takes " + g.num("speed_scaling:naive_over_fast", f, ["fits", "naive_over_fast"], "f1", tex)
            + r" times the fast strategy's search time. Timings need a quiet machine; the last column is the load "
            "average before each point.")
    out = [text, r"\begin{table}[tbp]\centering\footnotesize",
           tabular("llrrlrrrrr", ["sweep", "model", "ops", "images", "strategy", "search s", "floor s",
                                  "search / floor", "compile s", "load"], rows).strip(),
           r"\caption{Speed scaling (\texttt{experiments/results/speed\_scaling/}): fresh \texttt{qsens search} "
           r"processes with a warm compilation cache; the FLOP floor is every op's float suffix for each method and "
           r"image at the machine's best whole-graph float rate.}", r"\label{tab:scaling}", r"\end{table}"]
    return "\n".join(out) + "\n"


RENDERERS = {"calibration_ablation": calibration_ablation, "accuracy_sweep": accuracy_sweep,
             "ranking_stability": ranking_stability, "speed_scaling": speed_scaling}


def sweeps(g: Gen) -> None:
    """sec_<experiment>.tex for experiments 2-5: their rendering, or the sentence that they have not run.  The
    results of an experiment whose driver is still changing may not have the structure its renderer reads: then
    the section says so (and nothing it half-rendered is kept)."""
    import sys

    for name, words in SWEEPS.items():
        d = g.root / "experiments" / "results" / name
        files = sorted(str(p.relative_to(g.root)) for p in d.glob("*.json")) if d.is_dir() else []
        g.flag(macro_name("Have", name), bool(files))
        if not files:
            where = f"experiments/{name}.py" if (g.root / "experiments" / f"{name}.py").is_file() else \
                "experiments/run_all"
            g.write(f"sec_{name}.tex", not_run(words, where))
            continue
        if name in RENDERERS:
            saved = (dict(g.entries), dict(g.files))
            try:
                g.write(f"sec_{name}.tex", RENDERERS[name](g, files))
                continue
            except (KeyError, IndexError, TypeError) as e:
                g.entries, g.files = saved
                print(f"make_tables: {name}: results not in the structure the renderer reads ({e!r})", file=sys.stderr)
        g.write(f"sec_{name}.tex", rf"\emph{{(results of the {words} exist in experiments/results/"
                rf"{tex_escape(name)}/ but this version of paper/make\_tables.py does not render them)}}" + "\n")


# ---------------------------------------------------------------------------------------------------------------


def generate(root: Path = ROOT) -> Gen:
    """Read the results under ``root`` and build every generated file in memory."""
    g = Gen(root)
    g.flag("HaveInputs", g.has(INPUTS))
    g.macro("CILevel", INPUTS, ["parameters", "bootstrap_ci_level"], "pct0")
    seed_table(g)
    searchers_table(g)
    fidelity_table(g)
    variants_lite0_table(g)
    variants_models_table(g)
    tau_table(g)
    variants_figure(g)
    speed(g)
    sweeps(g)
    # the Lite0 similarity-scale example (the all-INT8 model of the searchers' run)
    g.macro("ScaleExampleSim", SEARCHERS, ["tools", "search_threshold (qsens calibrate --search)", "similarity"], "f6")
    g.macro("ScaleExampleCos", SEARCHERS, ["tools", "search_threshold (qsens calibrate --search)", "cosine"], "f6")
    g.write("numbers.tex", g.numbers_tex())
    g.write("numbers.json", g.numbers_json())
    return g


def write(g: Gen, out: Path) -> None:
    """Replace the files of ``out`` with the generated ones."""
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(out.iterdir()):
        if p.is_file():
            p.unlink()
    for name, content in sorted(g.files.items()):
        if isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            (out / name).write_text(content)


def main(argv=None) -> None:
    """Command line: generate into ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (its files are replaced)")
    a = ap.parse_args(argv)
    g = generate(ROOT)
    write(g, Path(a.out))
    n_png = sum(name.endswith(".png") for name in g.files)
    print(f"wrote {len(g.files)} files ({len(g.entries)} numbers, {n_png} figures) to {a.out}")


if __name__ == "__main__":
    main()
