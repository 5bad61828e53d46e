"""The paper's numbers come from the committed results, and nothing else.

(a) ``paper/make_tables.py`` run now writes exactly the committed ``paper/generated/`` (the text byte for byte:
nothing stale, nothing edited by hand; figures by name, since their bytes depend on the matplotlib build); (b) every ``numbers.json`` entry is the value at its JSON path, formatted by ``fmt``, and
that text is in the generated ``.tex`` file it names; (c) ``paper/paper.tex`` has no decimal number or percentage
typed into its text; (d) with texlive installed, the PDF builds from a copy of the paper and has 6 to 10 pages.
Also: a results tree with nothing in it gives the "has not been run" sentences and no number at all.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "paper"
GENERATED = PAPER / "generated"
APT = ("apt-get install -y --no-install-recommends texlive-latex-base texlive-latex-recommended "
       "texlive-fonts-recommended latexmk poppler-utils")


def _load_make_tables():
    spec = importlib.util.spec_from_file_location("paper_make_tables", PAPER / "make_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mt = _load_make_tables()


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_generated_files_are_up_to_date(tmp_path):
    """(a) The generator, run into a temporary folder, writes the committed files byte for byte."""
    out = tmp_path / "generated"
    subprocess.run([sys.executable, str(PAPER / "make_tables.py"), "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True)
    new, old = _files(out), _files(GENERATED)
    assert sorted(new) == sorted(old), "paper/generated/ is stale: run `python paper/make_tables.py`"
    # text byte for byte; figures only by name (their bytes depend on the matplotlib build and its fonts)
    differ = [n for n in new if new[n] != old[n] and not n.endswith(".png")]
    assert not differ, f"paper/generated/ is stale or edited by hand ({differ}): run `python paper/make_tables.py`"


def test_generation_is_deterministic():
    """The same results give the same bytes twice in one process (figures included)."""
    a, b = mt.generate(ROOT), mt.generate(ROOT)
    assert a.files == b.files


def test_every_number_is_traceable():
    """(b) Each numbers.json entry: raw value at its key path, text = fmt(value), text present in its .tex."""
    entries = json.loads((GENERATED / "numbers.json").read_text())
    assert entries, "numbers.json is empty"
    texts = {p.name: p.read_text() for p in GENERATED.glob("*.tex")}
    cache: dict[str, object] = {}
    for key, e in entries.items():
        if e["file"] not in cache:
            cache[e["file"]] = json.loads((ROOT / e["file"]).read_text())
        value = mt.apply_transform(mt.walk(cache[e["file"]], e["path"]), e["transform"])
        assert value == e["value"], f"{key}: {e['file']} {e['path']} is {value!r}, numbers.json says {e['value']!r}"
        assert mt.fmt(value, e["fmt"]) == e["text"], f"{key}: fmt gives {mt.fmt(value, e['fmt'])!r}"
        assert e["text"] in texts[e["tex"]], f"{key}: {e['text']!r} not in generated/{e['tex']}"
    macros = re.findall(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$", texts["numbers.tex"], re.M)
    for name, text in macros:
        if not text.startswith(r"\MissingResult"):
            assert entries[name]["text"] == text, name


def test_fmt():
    """The formats the paper uses."""
    f = mt.fmt
    assert f(0.9827329417069753, "f4") == "0.9827"
    assert f(0.8148148148148148, "pct1") == "81.5"
    assert f(1033.92, "s") == "1034" and f(86.61, "s") == "86.6"
    assert f(0.11900193299879902, "ms") == "119.0"
    assert f(7.291634877004682e-07, "sci") == r"\ensuremath{7.3\times10^{-7}}"
    assert f(-0.011370245477722049, "f2") == r"\ensuremath{-}0.01"
    assert f(None, "int") == "--" and f(16, "int") == "16" and f(0.999, "g") == "0.999"
    assert f("gen_const", "str") == r"gen\_const" and f(True, "bool") == "yes"
    with pytest.raises(ValueError):
        f(1.5, "int")
    assert mt.macro_name("Lite0", "INT8", "sim") == "LiteZeroINTEightSim"


def test_missing_results_give_sentences_not_numbers(tmp_path):
    """With no results at all, every section says its experiment has not been run, and no number is written."""
    g = mt.generate(tmp_path)
    assert g.entries == {}
    assert "has not been run" in g.files["tab_seed.tex"]
    for name in ("accuracy_sweep", "ranking_stability", "calibration_ablation", "speed_scaling"):
        assert "has not been run" in g.files[f"sec_{name}.tex"]
    assert not any(n.endswith(".png") for n in g.files)
    for name, text in g.files.items():
        if name.endswith(".tex"):
            assert typed_numbers(r"\begin{document}" + text) == [], name


_LENGTH = r"(?!\d|\s*(?:\\linewidth|\\textwidth|\\columnwidth|pt\b|em\b|ex\b|cm\b|mm\b|in\b))"
_TYPED = re.compile(r"\d+\.\d+" + _LENGTH + r"|\d+\s*(?:\\,|~|\\ )?\s*\\%")


def typed_numbers(tex: str) -> list[str]:
    """Decimal numbers and percentages typed into the body of ``tex`` (comments, macro definitions and lengths
    left out)."""
    body = tex.split(r"\begin{document}", 1)[-1]
    found = []
    for line in body.splitlines():
        line = re.sub(r"(?<!\\)%.*", "", line)
        if re.match(r"\s*\\(?:newcommand|renewcommand|providecommand|def)\b", line):
            continue
        found += _TYPED.findall(line)
    return found


def test_typed_numbers_detector():
    assert typed_numbers(r"\begin{document} a 0.98 b") == ["0.98"]
    assert typed_numbers(r"\begin{document} up 12\,\% and 3 \%") == [r"12\,\%", r"3 \%"]
    assert typed_numbers("\\begin{document} % 0.5 in a comment\n\\newcommand{\\X}{1.30.2}\n"
                         r"width=0.5\linewidth, \LiteZero\,\%, 8.5pt") == []


def test_no_number_typed_in_paper():
    """(c) paper.tex takes every decimal and percentage from the generated macros and tables."""
    found = typed_numbers((PAPER / "paper.tex").read_text())
    assert not found, f"numbers typed into paper/paper.tex (use a macro from generated/numbers.tex): {found}"


def _pages(pdf: Path) -> int:
    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        return int(re.search(r"^Pages:\s+(\d+)", out, re.M).group(1))
    return len(re.findall(rb"/Type\s*/Page(?!s)", pdf.read_bytes()))


def test_pdf_builds_with_6_to_10_pages(tmp_path):
    """(d) The committed paper builds (latexmk, else pdflatex + bibtex) and has 6-10 pages."""
    if shutil.which("latexmk") is None and shutil.which("pdflatex") is None:
        pytest.skip(f"texlive not installed: {APT}")
    d = tmp_path / "paper"
    d.mkdir()
    for name in ("paper.tex", "refs.bib"):
        shutil.copy(PAPER / name, d / name)
    shutil.copytree(GENERATED, d / "generated")
    if shutil.which("latexmk"):
        cmds = [["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"]]
    else:
        tex = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"]
        cmds = [tex, ["bibtex", "paper"], tex, tex]
    for cmd in cmds:
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}"
    log = (d / "paper.log").read_text(errors="replace")
    assert not re.search(r"(Citation|Reference) `[^']*' .*undefined|undefined references", log), \
        "undefined citations or references"
    n = _pages(d / "paper.pdf")
    assert 6 <= n <= 10, f"paper.pdf has {n} pages"
