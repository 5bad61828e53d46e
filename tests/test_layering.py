"""The layering README's architecture section draws: nothing imports upward.

Parsed from the source (``ast``), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qsens"

#: lower layers never import higher ones (same layer: allowed)
LAYERS = {
    "qsens.errors": 0, "qsens.paths": 0, "qsens.hostmem": 0, "qsens.metrics": 0, "qsens.exe_cache": 0,
    "qsens.onnx": 1, "qsens.data": 1, "qsens.tables": 1,
    "qsens.quant": 2, "qsens.calib": 2, "qsens.pipeline": 2, "qsens.zoo": 2, "qsens.mnist": 2,
    "qsens.engine": 3, "qsens.devices": 3,  # placement of the engine's arrays (devices, mesh, processes)
    "qsens.calibrate": 4,
    "qsens.search": 5,
    "qsens.report": 5,  # reads run directories (tables, search JSON); imports nothing of the search
    "qsens.cli": 6, "qsens.__main__": 6, "qsens.interop": 6,  # names / compare / run verbs (CLI glue)
}
#: inside qsens.search: the engine parts, then the job (the only I/O), then the workflows from files
SEARCH = {"candidates": 0, "selectors": 0, "memory": 0, "problem": 0, "evaluators": 1, "gradient": 1, "strategies": 2,
          "mixprec": 2, "variants": 2, "biascorr": 3, "calisearch": 3, "job": 3, "calijob": 4, "varjob": 4,
          "aidjob": 4, "workflows": 5, "aidflow": 5}
#: the simulation and search core never touch the zoo (real-model downloads) or the CLI
CORE = ("qsens.onnx", "qsens.quant", "qsens.calib", "qsens.engine", "qsens.devices", "qsens.calibrate", "qsens.metrics",
        "qsens.tables", "qsens.search.candidates", "qsens.search.selectors", "qsens.search.memory", "qsens.search.problem",
        "qsens.search.evaluators", "qsens.search.strategies", "qsens.search.mixprec", "qsens.search.calisearch",
        "qsens.search.job", "qsens.search.calijob", "qsens.search.gradient", "qsens.search.variants",
        "qsens.search.varjob")


def modules():
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        yield mod, pkg, ast.parse(p.read_text())


def imports(pkg: str, tree) -> set[str]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                m = ".".join(base + ([n.module] if n.module else []))
            else:
                m = n.module or ""
            if m.startswith("qsens"):
                out |= {f"{m}.{a.name}" for a in n.names} if (n.module is None or m == "qsens") else {m}
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("qsens")}
    return out


def layer(mod: str) -> int | None:
    for k, v in LAYERS.items():
        if mod == k or mod.startswith(k + "."):
            return v
    return None


ALL = list(modules())


def test_every_module_has_a_layer():
    assert [m for m, _, _ in ALL if m != "qsens" and layer(m) is None] == []


@pytest.mark.parametrize("mod, pkg, tree", ALL, ids=[m for m, _, _ in ALL])
def test_no_upward_imports(mod, pkg, tree):
    if mod == "qsens":  # the package's lazy top-level exports
        return
    bad = []
    for dep in imports(pkg, tree):
        top = ".".join(dep.split(".")[:2])
        if top == ".".join(mod.split(".")[:2]):
            if top == "qsens.search" and mod != "qsens.search" and dep.count(".") >= 2:
                a, b = SEARCH.get(mod.split(".")[2]), SEARCH.get(dep.split(".")[2])
                if a is not None and b is not None and b > a:
                    bad.append(dep)
            continue
        if layer(dep) is not None and layer(dep) > layer(mod):
            bad.append(dep)
        if mod.startswith(CORE) and (dep.startswith("qsens.zoo") or dep.startswith("qsens.cli")):
            bad.append(dep)
    assert bad == [], f"{mod} imports upward: {bad}"


def test_engine_does_not_import_zoo():
    tree = next(t for m, _, t in ALL if m == "qsens.engine")
    assert not any(d.startswith("qsens.zoo") for d in imports("qsens", tree))
