"""BM1684 vs BM1684X on one model: the same `qsens search` (TPU-MLIR's run_sensitive_layer) run once per chip.

    python experiments/chip_compare.py [--model efficientnet_lite0] [--work DIR] [--out FILE]

Each chip runs ``qsens search MODEL --dataset images100 --input_num 100 --inference_num 30 --chip CHIP
--expected_cos 0.99`` (the defaults otherwise: methods MAX/Percentile9999/KL, expected_cos 0.99, max_float_layers 5), so the calibration
table is the same and only the INT8 arithmetic differs (docs/bm1684.md vs docs/bm1684x.md).  The result
(``experiments/results/chip_compare.json``) holds per chip the all-INT8 similarity and plain cosine, the ops the
chip keeps in F32 inside the INT8 model, the float layers the search chose and the mixed model's similarity with
the original and the new table; a search that exits early (the all-INT8 model already passes expected_cos: TPU-MLIR's rule, nothing
written) is recorded from its log line with no float layers.  ``--strict`` adds a BM1684X search at a stricter
expected_cos (default 0.9999), to see which layers it would still keep in float.  BM1684X runs with ``--fp_type auto``
(TPU-MLIR's FLOAT_MAP: F16 float layers and an F16 reference model); the strict search is also run with
``--fp_type F32`` (float layers and reference F32, what qsens simulated before its F16 layers).  A finished qsens run
is not redone when the same ``--work`` is given.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from common import RESULTS, file_sha, meta, qtable_ops, rounded, run_qsens

CHIPS = ("bm1684", "bm1684x")


def run_chip(model: Path, folder: Path, chip: str, cfg: dict, work: Path, expected_cos: float,
             fp_type: str = "auto") -> dict:
    d = work / ((chip if expected_cos == cfg["expected_cos"] else f"{chip}_{expected_cos}")
                + ("" if fp_type == "auto" else f"_{fp_type}"))
    d.mkdir(parents=True, exist_ok=True)
    wall = run_qsens(["search", str(model), "--dataset", str(folder), "--input_num", str(cfg["images"]),
                      "--inference_num", str(cfg["inference"]), "--seed", str(cfg["seed"]), "--chip", chip,
                      "--fp_type", fp_type, "--expected_cos", str(expected_cos), "--out_dir", str(d / "search"), "-q"],
                     None, d / "search.log")
    if not (d / "search" / "search.json").exists():  # early exit (TPU-MLIR's: nothing written): the log line
        m = re.search(r"current int8 cos:(\S+) is higher than expected_cos", (d / "search.log").read_text())
        sim = float(m[1])
        out = {"int8_similarity": sim, "int8_cosine": 2 * sim - 1, "early_exit": True, "f32_ops_in_int8_model": None,
               "float_layers": [], "n_float_layers": 0, "qtable": [], "expected_cos": expected_cos,
               "reaches_expected_cos": True}
        out["fp_type"] = fp_type
        return {"result": out, "wall_s": wall}
    res = json.loads((d / "search" / "search.json").read_text())
    s = res.get("summary", {})
    out = {"int8_similarity": res["int8_similarity"], "int8_cosine": res["int8_cosine"],
           "early_exit": res["early_exit"], "f32_ops_in_int8_model": s.get("f32_ops", {}),
           "float_layers": res["float_layers"], "n_float_layers": len(res["float_layers"]),
           "qtable": qtable_ops(d / "search" / "qtable")}
    for k in ("mix_original_table", "mix_new_table"):
        if k in s:
            out[k] = s[k]
    out["expected_cos"] = expected_cos
    out["fp_type"] = fp_type
    out["reaches_expected_cos"] = bool(out.get("mix_new_table", {}).get("similarity", out["int8_similarity"])
                                       >= expected_cos)
    return {"result": out, "wall_s": wall}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--work", default=None, help="keep the qsens runs here (a killed run resumes)")
    ap.add_argument("--out", default=str(RESULTS / "chip_compare.json"))
    ap.add_argument("--strict", type=float, default=0.9999,
                    help="also run BM1684X at this expected_cos (its all-INT8 model passes 0.99; 0 = skip)")
    a = ap.parse_args(argv)
    from qsens.zoo import zoo_path

    cfg = {"seed": 1684, "images": 100, "inference": 30, "expected_cos": 0.99, "max_float_layers": 5,
           "methods": "max,percentile9999,kl", "dataset": "images100"}
    model = Path(zoo_path(f"{a.model}.onnx"))
    folder = Path(zoo_path(cfg["dataset"]))
    work = Path(a.work or tempfile.mkdtemp(prefix="chip_compare_"))
    runs = {c: run_chip(model, folder, c, cfg, work, cfg["expected_cos"]) for c in CHIPS}
    if a.strict:
        runs[f"bm1684x_expected_cos_{a.strict}"] = run_chip(model, folder, "bm1684x", cfg, work, a.strict)
        runs[f"bm1684x_expected_cos_{a.strict}_F32"] = run_chip(model, folder, "bm1684x", cfg, work, a.strict, "F32")
    data = {"meta": meta(cfg["seed"], cfg), "model": a.model, "model_sha256": file_sha(model),
            "command": f"qsens search {a.model}.onnx --dataset images100 --input_num {cfg['images']} --inference_num "
                       f"{cfg['inference']} --seed {cfg['seed']} --chip CHIP --expected_cos 0.99 (and BM1684X at --strict, "
                       "--fp_type auto = F16 and F32)",
            "chips": {c: r["result"] for c, r in runs.items()},
            "timings": {c: {"wall_s": r["wall_s"]} for c, r in runs.items()}}
    x, y = data["chips"]["bm1684"], data["chips"]["bm1684x"]
    data["summary"] = {"int8_similarity": {"bm1684": x["int8_similarity"], "bm1684x": y["int8_similarity"]},
                       "n_float_layers": {"bm1684": x["n_float_layers"], "bm1684x": y["n_float_layers"]},
                       "common_float_layers": [t for t in x["float_layers"] if t in y["float_layers"]]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rounded(data), indent=1) + "\n")
    print(f"wrote {a.out}")
    for c in data["chips"]:
        r = data["chips"][c]
        print(f"{c:8} all-INT8 similarity {r['int8_similarity']:.6f} (cos {r['int8_cosine']:.6f}); "
              f"{r['n_float_layers']} float layers {r['float_layers']}; "
              f"mix {r.get('mix_new_table', {}).get('similarity')}")


if __name__ == "__main__":
    main()
