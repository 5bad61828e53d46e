"""Shared helpers for the benchmark scripts (timing, machine description, JSON output)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

import qsens  # noqa: F401  (first: its host-memory policy must precede XLA's threads; qsens/hostmem.py)

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import jax

    from qsens.hostmem import keep_freed_memory

    dev = jax.devices()[0]
    return {
        "malloc_keep_freed": keep_freed_memory(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "git": _git(),
    }


def _git() -> str:
    if os.environ.get("QSENS_GIT_REV"):  # a copied working tree whose .git is not the source's (the GPU machine)
        return os.environ["QSENS_GIT_REV"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def median_time(fn, n: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), ts


def search_job_cmd(model, images, n_img: int, n_inf: int, out_dir, extra=()) -> list[str]:
    """The ``qsens search`` process every job benchmark times: ``qsens demo``'s flags (``--expected_cos 0.9999``, so
    the search always runs), quiet, in a fresh interpreter."""
    import sys

    return [sys.executable, "-m", "qsens", "search", str(model), "--dataset", str(images), "--input_num", str(n_img),
            "--inference_num", str(n_inf), "--expected_cos", "0.9999", "--out_dir", str(out_dir), "-q", *extra]


def write(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    dev = data.get("machine", {}).get("device", "cpu").split(":")[0]
    p = RESULTS / f"{name}_{dev}.json"
    p.write_text(json.dumps(data, indent=1) + "\n")
    return p
