"""``qsens report RUN_DIR``: the page of real runs (sensitive search, a variant, the mix-precision search) on a
generated net shows what their files hold; errors; the DOM headless Chromium renders."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

try:
    import search_models as sm
    from cli_util import EPOCH, one_line_error, run_cli, sub_env
except ImportError:
    from tests import search_models as sm
    from tests.cli_util import EPOCH, one_line_error, run_cli, sub_env

from qsens import cli
from qsens.report import collect_run, render_html, write_report
from qsens.tables import read_qtable


# ------------------------------------------------------------------------------------------------ runs
def _main(argv: list[str]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        mp.delenv("QSENS_TEST_GATE", raising=False)
        assert cli.main(argv) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """resnet_ish (14 ops), 8 .npy samples: a sensitive search (qsens calibrates: cali_table in its dir), a
    threshold_grid variant and a mix-precision search, both on the sensitive search's cali_table."""
    d = tmp_path_factory.mktemp("report")
    model = sm.save(sm.resnet_ish(blocks=3, seed=5), d / "net.onnx")
    data = sm.npy_dataset(d / "data", n=8, seed=1)
    common = ["--dataset", data, "--input_num", "8", "-q"]
    search = ["search", model, *common, "--inference_num", "4", "--tune_num", "1", "--expected_cos", "0.99999",
              "--max_float_layers", "3"]
    _main([*search, "--out_dir", str(d / "sens")])
    base = str(d / "sens" / "cali_table")
    _main([*search, "--out_dir", str(d / "grid"), "--variant", "threshold_grid", "--grid_size", "4",
           "--calibration_table", base])
    _main(["qtable", model, *common, "--calibration_table", base, "--expected_cos", "0.999999", "--min_layer_cos",
           "0.99999", "--out_dir", str(d / "qt")])
    return {"sens": d / "sens", "grid": d / "grid", "qt": d / "qt", "base": base}


# ------------------------------------------------------------------------------------------------ page parsing
class Page(HTMLParser):
    """Table body rows per section (``{section id: [(tr class, [cell texts])]}``), header rows, images, links."""

    def __init__(self, text: str):
        super().__init__()
        self.section, self.rows, self.heads, self.imgs, self.links, self.notes = None, {}, {}, [], [], {}
        self._cells: list[str] | None = None
        self._note = self._thead = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        elif tag == "thead":
            self._thead = True
        elif tag == "tr":
            (self.heads if self._thead else self.rows).setdefault(self.section, []).append((a.get("class"), []))
        elif tag in ("td", "th"):
            self._cells = (self.heads if self._thead else self.rows)[self.section][-1][1]
            self._cells.append("")
        elif tag == "img":
            self.imgs.append((self.section, a.get("src", "")))
        elif tag == "p" and a.get("class") == "note":
            self._note = True
            self.notes.setdefault(self.section, "")
        for k in ("src", "href"):
            if k in a:
                self.links.append(a[k])

    def handle_endtag(self, tag):
        if tag == "thead":
            self._thead = False
        elif tag in ("td", "th"):
            self._cells = None
        elif tag == "p":
            self._note = False

    def handle_data(self, data):
        if self._cells is not None:
            self._cells[-1] += data
        if self._note:
            self.notes[self.section] += data

    def body(self, section: str | None) -> list[tuple[str | None, list[str]]]:
        return self.rows.get(section, [])


def _page(run_dir: Path, **kw) -> tuple[Page, str]:
    path = write_report(run_dir, **kw)
    text = path.read_text()
    return Page(text), text


def _floats(run_dir: Path) -> list[str]:
    return [n for n, _ in read_qtable(run_dir / "qtable").ops]


def _table_fields(path: Path) -> dict[str, str]:
    """tensor -> the threshold exactly as the table file writes it"""
    return {ln.split()[0]: ln.split()[1] for ln in path.read_text().splitlines() if ln and not ln.startswith("#")}


def _self_contained(p: Page, text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "<link" not in text and "<script" not in text
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in p.links)
    for _, src in p.imgs:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def _float_rows(p: Page) -> list[str]:
    return [cells[1] for cls, cells in p.body("ops") if cls == "float-layer"]


# ------------------------------------------------------------------------------------------------ the pages
def test_sensitive_search_report(runs):
    run = runs["sens"]
    p, text = _page(run)
    _self_contained(p, text)
    res = json.loads((run / "search.json").read_text())
    floats = _floats(run)
    assert floats == res["float_layers"] and len(floats) == 3
    # the op table: every op in graph order, FLOAT exactly on the qtable's layers, the chosen method's threshold
    # as new_cali_table.txt writes it, every method's loss
    rows = p.body("ops")
    assert [cells[1] for _, cells in rows] == [o["op"] for o in res["ops"]]
    assert _float_rows(p) == [o["op"] for o in res["ops"] if o["op"] in floats]
    new = _table_fields(run / "new_cali_table.txt")
    for (_, cells), o in zip(rows, res["ops"]):
        assert cells[2] == o["type"] and cells[-1] == ("FLOAT" if o["op"] in floats else "INT8")
        assert cells[3:6] == [f"{c['loss']:.3e}" for c in o["candidates"]]
        assert cells[6] == new[o["op"]] == f"{o['best_threshold']:.7f}"
    assert p.heads["ops"][0][1] == ["#", "op", "type", "MAX", "Percentile9999", "KL", "threshold", "mode"]
    # thresholds: cali_table (old) vs new_cali_table.txt (new), the rows that differ highlighted
    old = _table_fields(run / "cali_table")
    th = p.body("thresholds")
    assert [(cells[0], cells[1], cells[2]) for _, cells in th] == [(t, old[t], new[t]) for t in new]
    changed = {cells[0] for cls, cells in th if cls == "changed"}
    assert changed == {t for t in new if new[t] != old[t]} and changed
    # header: the summary similarities, the model from the table's header, the counts
    s = res["summary"]
    for k in ("int8", "mix_new_table", "mix_original_table"):
        assert f"{s[k]['similarity']:.6f}" in text and f"cosine {s[k]['cosine']:.6f}" in text
    facts = dict(cells for _, cells in p.body(None))
    assert facts["model"].endswith("net.onnx") and facts["calibration samples"] == "8"
    assert facts["inference images"] == "4" and facts["float layers"] == "3" and facts["ops"] == str(len(res["ops"]))
    # one plot (per-op losses); the similarity curve is not in a sensitive run and says so
    assert [sec for sec, _ in p.imgs] == ["losses"]
    assert "records the whole curve" in p.notes["curve"]
    timings = dict(cells for _, cells in p.body("timings"))
    assert timings == {**{k: f"{v:.2f} s" for k, v in res["timings"].items() if k.endswith("_s")},
                       **{k: f"{v:.2f} cores" for k, v in res["timings"].items() if k.endswith("_cores")},
                       **{f"compile: {k}": f"{v:.2f} s" if k.endswith("_s") else str(v)
                          for k, v in res["timings"]["compile"].items()}}


def test_variant_report(runs):
    run = runs["grid"]
    res = json.loads((run / "search.json").read_text())
    p, text = _page(run, calibration_table=runs["base"])
    _self_contained(p, text)
    assert _float_rows(p) == [n for n in _table_fields(run / "new_cali_table.txt") if n in _floats(run)]
    assert [sec for sec, _ in p.imgs] == ["losses", "curve"]
    th = p.body("thresholds")
    assert sum(cls == "changed" for cls, _ in th) == res["summary"]["n_thresholds_changed"] >= 1
    assert {cells[0]: cells[2] for cls, cells in th if cls == "changed"} == {
        t: f"{v:.7f}" for t, v in res["thresholds_changed"].items()}
    scores = {cells[1]: cells[3] for _, cells in p.body("ops")}
    assert all(scores[n] == f"{v:.3e}" for n, v in res["state"]["scores"].items())
    opts = dict(cells for _, cells in p.body(None))
    assert opts["variant"] == "threshold_grid" and opts["grid_size"] == "4"
    # without the base table the threshold section is a note that says how to get it
    p, _ = _page(run)
    assert "thresholds" not in p.rows and "--calibration_table" in p.notes["thresholds"]


def test_qtable_report(runs):
    run = runs["qt"]
    res = json.loads((run / "qtable.json").read_text())
    p, text = _page(run)
    _self_contained(p, text)
    floats = _floats(run)
    assert floats == res["float_layers"] and floats and sorted(_float_rows(p)) == sorted(floats)
    walked = [n for n, _ in res["state"]["layer_cos"]]
    rows = {cells[1]: cells for _, cells in p.body("ops")}
    assert all(rows[n][3] == f"{1 - c:.3e}" for n, c in res["state"]["layer_cos"]) and set(walked) <= set(rows)
    assert [sec for sec, _ in p.imgs] == ["losses", "curve"]
    assert f"{res['true_mix_similarity']:.6f}" in text and f"{res['reported_mix_similarity']:.6f}" in text
    assert "new_cali_table.txt" in p.notes["thresholds"]


# ------------------------------------------------------------------------------------------------ CLI, errors
def test_cli_report(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    rc, stdout, _ = run_cli(["report", str(runs["sens"]), "-o", str(out)], capsys)
    assert rc == 0 and stdout.strip() == str(out)
    assert sorted(_float_rows(Page(out.read_text()))) == sorted(_floats(runs["sens"]))


def test_not_a_run_dir_is_a_one_line_error(tmp_path):
    (tmp_path / "qtable").write_text("")
    r = subprocess.run([sys.executable, "-m", "qsens", "report", str(tmp_path)], capture_output=True, text=True,
                       env=sub_env(), timeout=120)
    one_line_error(r.returncode, r.stderr, str(tmp_path), "search.json", "qtable.json")
    assert not (tmp_path / "report.html").exists()


def test_unfinished_and_broken_runs(tmp_path, capsys):
    (tmp_path / "search.ckpt.json").write_text("{}")
    rc, _, err = run_cli(["report", str(tmp_path)], capsys)
    one_line_error(rc, err, "search.ckpt.json", "--resume")
    (tmp_path / "search.json").write_text('{"ops": [')
    rc, _, err = run_cli(["report", str(tmp_path)], capsys)
    one_line_error(rc, err, str(tmp_path / "search.json"), "not valid JSON")
    rc, _, err = run_cli(["report", str(tmp_path / "nope")], capsys)
    one_line_error(rc, err, "not a directory")


def test_missing_optional_files_are_notes(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["sens"], run)
    for name in ("qtable", "new_cali_table.txt", "sensitivity.png"):
        (run / name).unlink()
    p, _ = _page(run)
    res = json.loads((run / "search.json").read_text())
    assert _float_rows(p) == [o["op"] for o in res["ops"] if o["op"] in res["float_layers"]]
    assert "qtable file is missing" in p.notes[None] and "new_cali_table.txt not found" in p.notes["thresholds"]
    assert "thresholds" not in p.rows


def test_names_are_escaped(runs):
    run = collect_run(runs["sens"])
    evil = '<img src=x onerror="alert(1)">&'
    run.ops[0].name = run.float_layers[0] = evil
    text = render_html(run)
    assert evil not in text and html.escape(evil, quote=True) in text


# ------------------------------------------------------------------------------------------------ a real browser
def test_chromium_renders_the_float_layers(request, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    runs = request.getfixturevalue("runs")
    path = write_report(runs["sens"], tmp_path / "report.html")
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.resolve().as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = Page(r.stdout)
    assert dom.imgs and _float_rows(dom) and sorted(_float_rows(dom)) == sorted(_floats(runs["sens"]))
