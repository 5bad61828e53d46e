"""The whole `qsens calibrate` process (import, decode, compile with an empty JAX cache, statistics, all
methods, tuner with tune_num 5, write) on images100/, and its peak RSS at 100 and 400 images.

    python benchmarks/calibrate.py

Bars (issue 5): <= 15 s and <= 1.5 GB at 100 images (stretch 10 s); RSS(400) <= 1.05 x RSS(100).
Writes benchmarks/results/calibrate_<device>.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write  # noqa: E402


def run(model, dataset, n, out, cache):
    env = dict(os.environ, QSENS_JAX_CACHE=str(cache))
    cmd = [sys.executable, "-m", "qsens", "calibrate", str(model), "--dataset", str(dataset), "--input_num", str(n),
           "--methods", "max,percentile9999,kl", "--tune_num", "5", "-o", str(out), "-q"]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(p.stderr.read()[-3000:])
    return {"wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024, "stdout": p.stdout.read().strip()}


def main():
    from qsens.zoo import zoo_path

    model = zoo_path("efficientnet_lite0.onnx")
    images = zoo_path("images100")
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        big = td / "images400"
        big.mkdir()
        for k in range(4):
            for f in sorted(images.iterdir()):
                os.symlink(f, big / f"r{k}_{f.name}")
        r100 = run(model, images, 100, td / "t100", td / "cache100")
        r400 = run(model, big, 400, td / "t400", td / "cache400")
    print(f"qsens calibrate, Lite0, 100 images, empty JAX cache: {r100['wall_s']:.1f} s (bar 15, stretch 10), "
          f"peak RSS {r100['peak_rss_mb']:.0f} MB (bar 1536)")
    print(f"400 images: {r400['wall_s']:.1f} s, peak RSS {r400['peak_rss_mb']:.0f} MB = "
          f"{r400['peak_rss_mb'] / r100['peak_rss_mb']:.3f} x the 100-image run (bar 1.05)")
    out = write("calibrate", {"benchmark": "qsens calibrate (max, percentile9999, kl; v1; tune_num 5), Lite0",
                              "images100": r100, "images400": r400,
                              "rss_ratio_400_over_100": r400["peak_rss_mb"] / r100["peak_rss_mb"],
                              "bars": {"wall_s": 15, "stretch_s": 10, "rss_mb": 1536, "rss_ratio": 1.05},
                              "machine": machine()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
