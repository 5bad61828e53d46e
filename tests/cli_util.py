"""Shared helpers of the CLI tests: run a verb in-process, a subprocess environment, one-line error checks, and a
run killed with SIGKILL at a checkpoint gate (a user ``--post_process`` file that blocks once the checkpoint
shows progress, so the kill lands mid-search deterministically)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qsens import cli

EPOCH = "1700000000"
REPO = Path(__file__).resolve().parents[1]

#: the gate: ``PostProcess`` is the identity until ``QSENS_TEST_GATE`` (a checkpoint file) satisfies ``done(ck)``
GATE_TEMPLATE = '''\\
import json, os, time


def PostProcess(outputs):
    gate = os.environ.get("QSENS_TEST_GATE")
    if gate:
        try:
            with open(gate) as f:
                ck = json.load(f)
            ok = {condition}
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            with open(gate + ".ready", "w") as f:
                f.write("1")
            time.sleep(600)
    return outputs
'''


def gate_file(path: Path, condition: str) -> str:
    """Write a post-process gate whose blocking condition is a Python expression over the checkpoint ``ck``."""
    path.write_text(GATE_TEMPLATE.format(condition=condition))
    return str(path)


def run_cli(argv, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        mp.delenv("QSENS_TEST_GATE", raising=False)
        mp.delenv("QSENS_DEBUG", raising=False)
        rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def sub_env(**extra):
    env = dict(os.environ)
    env.pop("QSENS_DEBUG", None)
    env.pop("QSENS_TEST_GATE", None)
    env["SOURCE_DATE_EPOCH"] = EPOCH
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def kill_at_gate(argv: list[str], gate: Path, tmp_path: Path, what: str = "the checkpoint gate") -> None:
    """Run ``qsens argv`` in a subprocess with the gate on ``gate``, SIGKILL it once the gate blocks."""
    log = tmp_path / "killed_run.log"
    with open(log, "wb") as logf:  # a file, not a pipe: a full pipe could block the child before the gate
        proc = subprocess.Popen([sys.executable, "-m", "qsens", *argv], cwd=str(tmp_path),
                                env=sub_env(QSENS_TEST_GATE=str(gate)), stdout=logf, stderr=subprocess.STDOUT)
        ready = Path(str(gate) + ".ready")
        t0 = time.time()
        try:
            while not ready.exists():
                assert proc.poll() is None, f"the run ended before {what}: {log.read_text()[-2000:]}"
                assert time.time() - t0 < 240, f"{what} was never reached"
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ready.unlink()


def one_line_error(rc, err, *needles) -> str:
    """A user error: exit 2, exactly one ``qsens: error:`` line naming every needle, no traceback."""
    assert rc == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qsens: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def normalize_outputs(out_dir: Path, model: str = "") -> dict[str, str]:
    """Every file the search wrote, as text with paths and timings taken out."""
    res = {}
    for p in sorted(out_dir.iterdir()):
        if p.suffix == ".png" or not p.is_file():
            continue
        text = p.read_text().replace(str(out_dir), "<out>").replace(str(model) or "<model>", "<model>")
        if p.name == "search.json":
            d = json.loads(text)
            d.pop("timings", None)
            for o in d.get("ops", []):
                o.pop("seconds", None)
            text = json.dumps(d, indent=1, sort_keys=True) + "\n"
        else:
            text = re.sub(r"total time:.*", "total time:<t>", text)
        res[p.name] = text
    return res
