"""TPU-MLIR's four searchers, as qsens runs them, side by side on one model and one image set.

    python experiments/tpu_mlir_searchers.py [--model efficientnet_lite0.onnx --images 100 --inference 30
                                             --expected_cos 0.99 --out experiments/results/tpu_mlir_searchers.json]

Each tool is its qsens verb in a fresh process, with TPU-MLIR's defaults except the image counts (all use the
same seeded selection: 100 calibration images, the first 30 of the same shuffle for inference):

| tool (TPU-MLIR) | qsens |
|---|---|
| ``run_sensitive_layer.py`` (1.23) | ``qsens search`` |
| ``run_qtable.py`` (1.23) | ``qsens qtable`` with ``search``'s KL table |
| ``run_calibration.py --search search_qtable`` (1.30.2) | ``qsens calibrate --search search_qtable`` |
| ``run_calibration.py --search fast_search`` (1.30.2) | ``qsens calibrate --search fast_search`` |
| ``run_calibration.py --search search_threshold`` (1.30.2) | ``qsens calibrate --search search_threshold`` |

Every outcome (a calibration table + the float layers of its qtable) is then scored the same way on the 30
inference images: similarity on both scales, top-1 agreement with FP32, labelled top-1 / top-5 where the zoo
knows the label.  Wall time is each process's.  Writes the JSON and prints a Markdown table.
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

import qsens  # noqa: F401  (first: hostmem's malloc policy)

ROOT = Path(__file__).resolve().parents[1]


def qtable_ops(path: Path) -> list[str]:
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def run(cmd: list[str], env) -> float:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "qsens", *cmd], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"qsens {' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet_lite0.onnx")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--inference", type=int, default=30)
    ap.add_argument("--expected_cos", default="0.99")
    ap.add_argument("--out", default=str(ROOT / "experiments/results/tpu_mlir_searchers.json"))
    a = ap.parse_args(argv)
    from qsens.zoo import zoo_path

    model, images = str(zoo_path(a.model)), str(zoo_path("images100"))
    work = Path(tempfile.mkdtemp(prefix="searchers_"))
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    data = ["--dataset", images, "--input_num", str(a.images)]
    rows = {}
    d = work / "sensitive"
    wall = run(["search", model, *data, "--inference_num", str(a.inference), "--expected_cos", a.expected_cos,
                "--out_dir", str(d), "-q"], env)
    rows["run_sensitive_layer (qsens search)"] = (d / "new_cali_table.txt", qtable_ops(d / "qtable"), wall)
    q = work / "qtable"
    wall = run(["qtable", model, "--dataset", images, "--input_num", str(a.inference), "--calibration_table",
                str(d / "cali_table"), "--expected_cos", a.expected_cos, "--out_dir", str(q), "-q"], env)
    rows["run_qtable (qsens qtable)"] = (d / "cali_table", qtable_ops(q / "qtable"), wall)
    for mode in ("search_qtable", "fast_search", "search_threshold"):
        m = work / mode
        m.mkdir()
        wall = run(["calibrate", model, *data, "--inference_num", str(a.inference), "--search", mode,
                    "--expected_cos", a.expected_cos, "--quantize_table", str(m / "qtable"), "-o",
                    str(m / "cali_table"), "-q"], env)
        table = m / "new_cali_table.txt" if mode == "search_qtable" else m / "cali_table"
        rows[f"{mode} (qsens calibrate --search)"] = (table, qtable_ops(m / "qtable"), wall)

    # score every outcome the same way
    import numpy as np

    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import load_inputs, make_preprocess, preset_for_model
    from qsens.search.evaluators import Config, run_mixed
    from qsens.search.job import label_accuracy
    from qsens.search.problem import Problem
    from qsens.tables import read_cali_table
    from qsens.zoo import labels_if_known

    fn, _ = to_jax(model)
    g = fn.graph
    files = select_files(images, input_num=a.inference)
    x = load_inputs(files, g, make_preprocess(g, preset=preset_for_model(model)))
    labels = labels_if_known(files)
    res = {"model": a.model, "images": a.images, "inference": a.inference, "expected_cos": a.expected_cos,
           "tools": {}}
    ref = None
    for name, (table, fl, wall) in rows.items():
        p = Problem.from_table(fn.model, read_cali_table(table), x)
        outs = run_mixed(p, Config(frozenset(g.op_names) - set(fl), p.th0))
        sim = float(np.mean(p.scorer.per_sample(outs)))
        cos = p.scorer.cosine(outs)
        o = np.asarray(outs[next(iter(outs))])
        ref = np.asarray(p.ref_outputs[next(iter(p.ref_outputs))])
        r = {"float_layers": fl, "n_float_layers": len(fl), "similarity": sim, "cosine": cos,
             "top1_agreement": float(np.mean(o.argmax(1) == ref.argmax(1))), "wall_s": round(wall, 1),
             "table": table.name}
        if labels is not None:
            r["labelled"] = label_accuracy(o, labels)
        res["tools"][name] = r
    if labels is not None:
        res["fp32_labelled"] = label_accuracy(ref, labels)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    from benchmarks.common import machine  # noqa: PLC0415

    res["machine"] = machine()
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print("| tool | float layers | similarity (0.5+0.5cos) | plain cosine | top-1 agreement | labelled top-1 / top-5 "
          "| wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res["tools"].items():
        lab = r.get("labelled")
        labs = f"{lab['top1']:.3f} / {lab['top5']:.3f}" if lab else "-"
        print(f"| {name} | {r['n_float_layers']} | {r['similarity']:.6f} | {r['cosine']:.6f} | "
              f"{r['top1_agreement']:.3f} | {labs} | {r['wall_s']} |")
    if labels is not None:
        f = res["fp32_labelled"]
        print(f"FP32 labelled top-1 / top-5 on {f['n']} images: {f['top1']:.3f} / {f['top5']:.3f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
