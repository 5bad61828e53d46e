"""Scale: the whole `qsens search` job over 1 / 2 / 4 devices, and a big job under the memory planner, in one run.

    python benchmarks/scaling.py [--quick]

1. **Devices**: EfficientNet-Lite0, 100 calibration / 30 inference images, ``--devices 1|2|4`` with
   ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (forced CPU devices; on a GPU machine the real ones).
   Each setting runs twice on one JAX compilation cache and the second (warm) run is reported: wall, search
   compute, cores used (user+sys over wall), peak RSS; the float layers must be the same in every run.
2. **Memory**: EfficientNet-Lite2 (260 px), 300 inference images (the 100 real images of ``images100`` and
   their mirrored and rotated copies: for time and memory only, never for accuracy), ``--max_memory 1G`` and
   the default budget: peak RSS (the issue's bar: 1.5 GB), search time, resident chunks.  ``--nets lite2,bignet``
   adds the ResNet-50-shaped network of ``benchmarks/bignet.py`` (4.8x Lite2's work per image) to this part.
Search time against ops and images is ``experiments/speed_scaling.py``'s (README "Speed scaling").
Writes benchmarks/results/scaling_<device>.json and scaling_<device>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, search_job_cmd, write  # noqa: E402


def run(model, images, n_img, n_inf, out_dir, cache_dir, extra=(), env_extra=None):
    env = dict(os.environ, QSENS_JAX_CACHE=str(cache_dir), SOURCE_DATE_EPOCH="1700000000", **(env_extra or {}))
    cmd = search_job_cmd(model, images, n_img, n_inf, out_dir, extra)
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"job failed: {' '.join(cmd)}\n{err[-3000:]}")
    res = json.loads((Path(out_dir) / "search.json").read_text())
    return {"wall_s": wall, "timings": res["timings"], "float_layers": res["float_layers"],
            "all_int8_similarity": res["summary"].get("all_int8_similarity"), "stdout": out.strip().splitlines()[-2:]}


def augmented_images(src: Path, dst: Path, n: int) -> Path:
    """``n`` JPEGs: the real images, then mirrored, then rotated by 90/180/270 degrees (distinct inputs)."""
    from PIL import Image, ImageOps

    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    ops = [lambda im: im, ImageOps.mirror, lambda im: im.rotate(90, expand=True),
           lambda im: im.rotate(180), lambda im: im.rotate(270, expand=True)]
    for k in range(n):
        f = files[k % len(files)]
        im = ops[(k // len(files)) % len(ops)](Image.open(f).convert("RGB"))
        im.save(dst / f"aug{k:04d}.jpg", quality=95)
    return dst


def child_rss(cmd_args: list[str]) -> dict:
    """Run this script's ``--one`` mode in a fresh process: one job, its own peak RSS."""
    p = subprocess.run([sys.executable, __file__, "--one", json.dumps(cmd_args)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def one(spec: str) -> None:
    import resource

    a = json.loads(spec)
    res = run(a["model"], a["images"], a["n_img"], a["n_inf"], a["out"], a["cache"], a.get("extra", ()),
              a.get("env"))
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    res["peak_rss_mb"] = r.ru_maxrss / 1024
    res["cpu_s"] = r.ru_utime + r.ru_stime
    res["cores_used"] = res["cpu_s"] / res["wall_s"]
    print(json.dumps(res))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="10 inference images, Lite2 with 60: a smoke run")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-devices", action="store_true", help="only the memory part; merged into the existing JSON")
    ap.add_argument("--budgets", default="1G,default", help="--max_memory values of the memory part ('default': none)")
    ap.add_argument("--nets", default="lite2", help="networks of the memory part: lite2 and/or bignet (the "
                    "ResNet-50-shaped export of benchmarks/bignet.py, built on first use)")
    args = ap.parse_args(argv)
    if args.one:
        return one(args.one)
    from qsens.zoo import zoo_path

    lite0, lite2 = zoo_path("efficientnet_lite0.onnx"), zoo_path("efficientnet_lite2.onnx")
    images = zoo_path("images100")
    n_inf = 10 if args.quick else 30
    big_inf = 60 if args.quick else 300
    import jax

    on_cpu = jax.default_backend() == "cpu"
    forced = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"} if on_cpu else {}
    counts = [n for n in ("1", "2", "4") if on_cpu or int(n) <= len(jax.devices())]
    out: dict = {"devices": {}, "memory": {}}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        cache = td / "jax_cache"
        for n in ([] if args.skip_devices else counts):
            spec = {"model": str(lite0), "images": str(images), "n_img": 100, "n_inf": n_inf, "cache": str(cache),
                    "extra": ["--devices", n], "env": forced}
            child_rss({**spec, "out": str(td / f"d{n}_cold")})
            r = child_rss({**spec, "out": str(td / f"d{n}")})
            out["devices"][n] = r
            t = r["timings"]
            print(f"--devices {n}: whole job {r['wall_s']:.1f} s warm, search {t['search_s']:.1f} s, "
                  f"{r['cores_used']:.2f} cores, peak RSS {r['peak_rss_mb']:.0f} MB, float layers {r['float_layers']}",
                  flush=True)
        if out["devices"]:
            same = len({tuple(r["float_layers"]) for r in out["devices"].values()}) == 1
            print(f"same float layers on 1/2/4 devices: {same}")
            out["devices_same_float_layers"] = same
        if not args.skip_memory:
            aug = augmented_images(images, td / "images_aug", big_inf)
            for net in args.nets.split(","):
                if net == "bignet":
                    from bignet import build, default_path

                    model, key, name = default_path(), "memory_bignet", "ResNet-50-shaped (random weights)"
                    if not model.exists():
                        build(model)
                else:
                    model, key, name = lite2, "memory", "Lite2"
                for b in args.budgets.split(","):
                    label, extra = ("default", []) if b == "default" else (f"max_memory_{b}", ["--max_memory", b])
                    r = child_rss({"model": str(model), "images": str(aug), "n_img": 100, "n_inf": big_inf,
                                   "cache": str(cache), "extra": extra, "out": str(td / f"m_{net}_{label}")})
                    out.setdefault(key, {})[label] = r
                    print(f"{name}, {big_inf} inference images, {label}: whole job {r['wall_s']:.1f} s, search "
                          f"{r['timings']['search_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB (bar 1536)",
                          flush=True)
    prev = RESULTS / f"scaling_{jax.devices()[0].platform}.json"
    if (args.skip_devices or args.skip_memory) and prev.exists():  # merge the part not re-run from the last JSON
        old = json.loads(prev.read_text())
        if args.skip_devices:
            old["memory"].update(out["memory"])
            if "memory_bignet" in out:
                old.setdefault("memory_bignet", {}).update(out["memory_bignet"])
            old["memory_measured_separately"] = {"load_average_end": os.getloadavg(), "quick": args.quick}
            out = {**old, "memory": old["memory"]}
        else:
            out["memory"] = old.get("memory", {})
            if "memory_bignet" in old:
                out["memory_bignet"] = old["memory_bignet"]
            out["memory_measured_before"] = {"load_average_end": old.get("load_average_end")}
    if out["devices"]:
        base = out["devices"]["1"]["timings"]["search_s"]
        out["search_speedup"] = {n: base / r["timings"]["search_s"] for n, r in out["devices"].items()}
    out["bars"] = {"lite2_300_rss_mb": 1536}
    out["machine"] = machine()
    out["load_average_end"] = os.getloadavg()
    out["quick"] = args.quick
    path = write("scaling", out)
    plot(out, Path(path).with_suffix(".png"))
    print(f"wrote {path}")


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2 if out["memory"] else 1, figsize=(9 if out["memory"] else 4.5, 3.2), squeeze=False)
    ns = sorted(out["devices"], key=int)
    ax[0, 0].bar(ns, [out["devices"][n]["timings"]["search_s"] for n in ns], color="#4c72b0", label="search")
    ax[0, 0].bar(ns, [out["devices"][n]["wall_s"] - out["devices"][n]["timings"]["search_s"] for n in ns],
                 bottom=[out["devices"][n]["timings"]["search_s"] for n in ns], color="#aaaaaa", label="rest of job")
    ax[0, 0].set_xlabel("--devices (forced CPU devices)" if out["machine"]["device"].startswith("cpu") else "--devices")
    ax[0, 0].set_ylabel("seconds (warm)")
    ax[0, 0].set_title("Lite0 job")
    ax[0, 0].legend(fontsize=7)
    if out["memory"]:
        labels = list(out["memory"])
        ax[0, 1].bar(labels, [out["memory"][k]["peak_rss_mb"] for k in labels], color="#55a868")
        ax[0, 1].axhline(1536, color="r", lw=1, ls="--", label="1.5 GB")
        ax[0, 1].set_ylabel("peak RSS (MB)")
        ax[0, 1].set_title("Lite2, many inference images")
        ax[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
