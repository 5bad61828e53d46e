"""README's Python API block for experiments runs as written (on the zoo's Lite0, 10/5 images)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.zoo
def test_readme_experiment_block_runs(zoo, capsys):
    code = next(b for b in blocks() if "strategy.update" in b)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"all-INT8 similarity 0\.\d{4}; most sensitive op \S+ \(loss \d\.\d\de-\d\d\)", out), out
    assert re.search(r"leave-one-out float layers: \['\w+', '\w+', '\w+'\] gains: \[", out), out


def test_readme_api_names_exist():
    """Every ``from qsens... import a, b`` in README's Python blocks names something that exists."""
    import importlib

    for b in blocks():
        for mod, names in re.findall(r"^from (qsens[\w.]*) import ([\w, ]+)$", b, re.M):
            m = importlib.import_module(mod)
            for n in names.split(","):
                assert hasattr(m, n.strip()), f"{mod}.{n.strip()}"
