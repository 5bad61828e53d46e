"""Issue 12 before / after: how much of each network qsens runs in INT8, the all-INT8 similarity and the sensitive
search's choice, for the qsens code before the constant-operand / LUT / Upsample / Deconv work and after it, next to
what TPU-MLIR 1.23 does on the same nets.

    python experiments/int8_coverage.py [--before bca3c5b] [--out experiments/results/int8_coverage.json]

Nets: the torch-built reference nets (MobileNetV3-small-style ``mbv3s``, YOLOv5-n-style ``yolo5n``, ``fpn``), the
generated ``gen_const`` and ``gen_wconst`` nets (tests/fixtures/tpu_mlir/*, TPU-MLIR's results in the same folders) and
EfficientNet-Lite0 (which has none of these ops: its results must not change).  Each side runs ``qsens search``
(its own KL-tuned calibration, the fixture's flags: 20 calibration / 10 inference images of the zoo's images100,
``--expected_cos 0.9999 --max_float_layers 3``; Lite0: its demo settings) in a fresh process on a clean checkout of
its commit (``git worktree``), and counts the ops its BM1684 INT8 model keeps in F32; the float model's outputs on a
seeded input are hashed on both sides (the fusions must not change them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "tpu_mlir"
NETS = ["mbv3s", "yolo5n", "fpn", "gen_const", "gen_wconst", "efficientnet_lite0"]

PROBE = r"""
import hashlib, json, sys
import jax, numpy as np
import qsens.onnx
from qsens.quant.mixed import make_plan
fn, params = qsens.onnx.to_jax(sys.argv[1])
g = fn.graph
plan = make_plan(g)
shape = g.tensor_shape(g.inputs[0])
x = np.random.default_rng(0).uniform(-1, 1, (2,) + tuple(shape[1:])).astype(np.float32)
h = hashlib.sha256()
for y in jax.jit(fn)(params, x).values():
    h.update(np.asarray(y, np.float32).tobytes())
print(json.dumps({"n_ops": len(g.ops) - len(g.inputs), "f32_ops": sorted(plan.f32_reason),
                  "f32_types": sorted({op.type for op in g.ops if op.name in plan.f32_reason}),
                  "float_outputs_sha256": h.hexdigest()}))
"""


def _flags(name: str) -> tuple[str, list[str]]:
    images = str(Path.home() / ".cache/qsens/zoo/images100")
    if name == "efficientnet_lite0":
        model = str(Path.home() / ".cache/qsens/zoo/efficientnet_lite0.onnx")
        return model, ["--dataset", images, "--input_num", "100", "--inference_num", "30", "--max_float_layers", "5"]
    meta = json.loads((FIX / name / "meta.json").read_text())
    f = meta["flags"]
    pre = [x for k in ("resize_dims", "mean", "scale", "pixel_format") if f.get(k) for x in (f"--{k}", str(f[k]))]
    return str(FIX / name / meta["model"]), ["--dataset", images, "--input_num", str(f["input_num"]), "--inference_num",
                                             str(f["inference_num"]), "--expected_cos", str(f["expected_cos"]),
                                             "--max_float_layers", str(f["max_float_layers"]), *pre]


def run_side(tree: Path, python: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = {}
    for name in NETS:
        model, flags = _flags(name)
        p = subprocess.run([python, "-c", PROBE, model], env=env, capture_output=True, text=True, cwd=tree)
        with tempfile.TemporaryDirectory() as d:
            q = subprocess.run([python, "-m", "qsens", "search", model, *flags, "--out_dir", d, "-q"], env=env,
                               cwd=tree, capture_output=True, text=True)
            if p.returncode or q.returncode:  # kept as found (e.g. the old code could not run gen_wconst)
                err = [ln for ln in (p.stderr if p.returncode else q.stderr).splitlines() if "Error" in ln]
                out[name] = {"error": err[-1].strip() if err else f"exit {p.returncode or q.returncode}"}
                print(f"  {name}: failed: {out[name]['error']}", flush=True)
                continue
            probe = json.loads(p.stdout.splitlines()[-1])
            s = json.loads((Path(d) / "search.json").read_text())
        out[name] = {**probe, "int8_similarity": round(float(s["summary"]["int8"]["similarity"]), 6),
                     "float_layers": s["float_layers"],
                     "mix_similarity": round(float(s["summary"]["mix_new_table"]["similarity"]), 6)
                     if s["float_layers"] else None}
        print(f"  {name}: {out[name]['n_ops']} ops, {len(out[name]['f32_ops'])} F32, INT8 "
              f"{out[name]['int8_similarity']}, float layers {out[name]['float_layers']}", flush=True)
    return out


def tpu_mlir_side() -> dict:
    out = {}
    for name in NETS[:-1]:
        q = json.loads((FIX / name / "int8" / "qinfo.json").read_text())
        ops = json.loads((FIX / name / "ops.json").read_text())
        s = json.loads((FIX / name / "sensitive" / "summary.json").read_text())
        f32 = [o["name"] for o in ops if o["type"] != "top.Input" and q[o["name"]]["dtype"] == "F32"]
        out[name] = {"n_ops": len(ops) - 1, "f32_ops": f32, "int8_similarity": s["int8_outputs_cos"],
                     "float_layers": s["float_layers"], "mix_similarity": s["mix_outputs_cos"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="bca3c5b", help="the commit before issue 12")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "int8_coverage.json")
    a = ap.parse_args(argv)
    res = {"before_commit": a.before,
           "after_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip(), "settings": {n: _flags(n)[1] for n in NETS}}
    with tempfile.TemporaryDirectory() as d:
        wt = Path(d) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), a.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            print(f"before ({a.before}):")
            res["before"] = run_side(wt, sys.executable)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
    print("after (this tree):")
    res["after"] = run_side(ROOT, sys.executable)
    res["tpu_mlir_1.23"] = tpu_mlir_side()
    res["float_model_unchanged"] = {n: res["before"][n].get("float_outputs_sha256") == res["after"][n]["float_outputs_sha256"]
                                    for n in NETS if "error" not in res["before"][n]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print("\n| net | ops (before / after / TPU-MLIR) | F32 in the INT8 model (before / after / TPU-MLIR) | all-INT8 "
          "similarity (before / after / TPU-MLIR) | float layers after (TPU-MLIR) |\n|---|---|---|---|---|")
    for n in NETS:
        b, af, t = res["before"][n], res["after"][n], res["tpu_mlir_1.23"].get(n, {})
        if "error" in b:
            b = {"n_ops": "-", "f32_ops": (), "int8_similarity": "failed"}
        print(f"| {n} | {b['n_ops']} / {af['n_ops']} / {t.get('n_ops', '-')} | {len(b['f32_ops'])} / "
              f"{len(af['f32_ops'])} / {len(t['f32_ops']) if t else '-'} | {b['int8_similarity']} / "
              f"{af['int8_similarity']} / {t.get('int8_similarity', '-')} | {', '.join(af['float_layers'])} "
              f"({', '.join(t.get('float_layers', [])) or '-'}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
