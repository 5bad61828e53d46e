"""Experiment: TPU-MLIR's accuracy aids (``run_calibration.py --we --bc --sq``) against the float layers still needed.

    python experiments/accuracy_aids.py [--models efficientnet_lite0,mnist_mbv2] [--work DIR] [--out DIR]
                                        (config: configs/accuracy_aids.json)

Per model and per aid setting of the config (``none``, ``we``, ``bc``, ``we+bc``, ``sq``), TPU-MLIR's flow with its
defaults: ``qsens calibrate --input_num <images> [--we] [--bc --bc_inference_num N] [--sq] --save_model M -o T``
(run_calibration: sq, we, calibration, bc, re-calibration; ``--expected_cos`` / ``--min_layer_cos`` 0.99), then
``qsens search M --calibration_table T`` (run_sensitive_layer on the aided model; ``--expected_cos 0.9999`` and
``max_float_layers`` so it ranks that many layers).  Every prefix of the search's qtable (0 .. max_float_layers
float layers, the search's new table) is then scored exactly on the ``inference`` search images and on the
held-out images, against two references:

* ``aided_fp32``: the aided model's own float outputs -- what TPU-MLIR's tools report after ``--we/--bc``, since
  they rewrite the Top MLIR's weights in place;
* ``original_fp32``: the original model's float outputs -- what the user deploys against.

``float_layers_for_target``: the smallest prefix reaching ``target`` (TPU-MLIR scale), ``null`` when none of the
``max_float_layers`` does.  Writes ``results/accuracy_aids/<model>.json`` and ``summary.md``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import qsens  # noqa: F401  (first: hostmem's malloc policy)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.common import (  # noqa: E402
    Evaluator,
    driver_args,
    file_sha,
    model_folders,
    qtable_ops,
    run_models,
    run_qsens,
)

EXPERIMENT = "accuracy_aids"
FLAGS = {"we": ["--we"], "bc": ["--bc"], "sq": ["--sq"]}


def aid_flags(aid: str, cfg: dict) -> list[str]:
    out: list[str] = []
    for a in ([] if aid == "none" else aid.split("+")):
        out += FLAGS[a]
    if "bc" in aid.split("+"):
        out += ["--bc_inference_num", str(cfg["bc_inference_num"])]
    return out


def run_model(key: str, cfg: dict, work: Path) -> dict:
    import numpy as np

    from qsens.data.dataset import select_files
    from qsens.pipeline import preset_for_model
    from qsens.search.evaluators import Config, run_mixed
    from qsens.search.problem import Scorer
    from qsens.zoo import zoo_path

    search_set, held_set, _ = model_folders(key)
    model = str(zoo_path(f"{key}.onnx"))
    preset = preset_for_model(model)
    folder = str(zoo_path(search_set))
    pool = select_files(folder, input_num=0, seed=cfg["seed"])
    sets = {"search": pool[: cfg["inference"]],
            "held_out": pool[cfg["inference"]:] if held_set is None else select_files(str(zoo_path(held_set)), input_num=0)}
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = Evaluator(model, sets, preset=preset)
    rows: dict = {}
    timings: dict = {}
    orig_ref: dict = {}
    for aid in cfg["aids"]:
        d = work / aid
        d.mkdir(parents=True, exist_ok=True)
        aided = d / f"{key}.aided.onnx" if aid != "none" else Path(model)
        table = d / "cali_table"
        cal_cmd = ["calibrate", model, "--dataset", folder, "--input_num", str(cfg["images"]), "--seed", str(cfg["seed"]),
                   *aid_flags(aid, cfg), "-o", str(table), "-q"]
        if aid != "none":
            cal_cmd += ["--save_model", str(aided)]
        t_cal = run_qsens(cal_cmd, None, d / "calibrate.log")
        s_dir = d / "search"
        t_s = run_qsens(["search", str(aided), "--preset", preset or "", "--dataset", folder, "--input_num",
                         str(cfg["images"]), "--seed", str(cfg["seed"]), "--inference_num", str(cfg["inference"]),
                         "--max_float_layers", str(cfg["max_float_layers"]), "--expected_cos", "0.9999",
                         "--calibration_table", str(table), "--out_dir", str(s_dir), "-q"], None, d / "search.log")
        timings[aid] = {"calibrate_s": t_cal, "search_s": t_s}
        order = qtable_ops(s_dir / "qtable")
        ev = Evaluator(str(aided), sets, preset=preset)
        new_table = s_dir / "new_cali_table.txt"
        row: dict = {"qtable": order, "model_sha256": file_sha(aided)}
        rec_path = d / f"{key}.aided.aids.json"
        if rec_path.exists():
            rec = json.loads(rec_path.read_text())
            row["aids_record"] = {
                "we_pairs": len(rec.get("we", {}).get("pairs", [])),
                "we_pairs_across_relu6": sum(p["bounded_relu"] for p in rec.get("we", {}).get("pairs", [])),
                "bc": None if "bc" not in rec else {k: rec["bc"].get(k, []) for k in ("all_int8_cos", "best_outputs_cos",
                                                                                      "end", "applied")}
                | {"attempts": len(rec["bc"]["attempts"])},
                "sq_smooth_ops": rec.get("sq", {}).get("smooth_ops"),
                "changed_initializers": len(rec["written"]["initializers"])}
        for which in sets:
            if which not in orig_ref:
                orig_ref[which] = base.problem(table if aid == "none" else work / "none" / "cali_table", which).ref_outputs
            p = ev.problem(new_table, which)
            p0 = ev.problem(table, which)
            orig = Scorer(orig_ref[which])
            fl = np.asarray(next(iter(p.ref_outputs.values())))
            o0 = np.asarray(next(iter(orig_ref[which].values())))
            res = {"aided_fp32_vs_original_fp32": float(np.mean(orig.per_sample(p.ref_outputs))),
                   "aided_fp32_top1_agreement": float(np.mean(fl.argmax(1) == o0.argmax(1))) if fl.ndim == 2 else None,
                   "int8_calibrated_table": {}, "prefix": {"aided_fp32": [], "original_fp32": []}}
            outs = run_mixed(p0, Config(frozenset(ev.graph.op_names), p0.th0))
            res["int8_calibrated_table"] = {"aided_fp32": float(np.mean(p0.scorer.per_sample(outs))),
                                            "original_fp32": float(np.mean(orig.per_sample(outs)))}
            for n in range(len(order) + 1):
                outs = run_mixed(p, Config(frozenset(ev.graph.op_names) - set(order[:n]), p.th0))
                res["prefix"]["aided_fp32"].append(float(np.mean(p.scorer.per_sample(outs))))
                res["prefix"]["original_fp32"].append(float(np.mean(orig.per_sample(outs))))
            res["float_layers_for_target"] = {
                ref: next((n for n, v in enumerate(vals) if v >= cfg["target"]), None)
                for ref, vals in res["prefix"].items()}
            row[which] = res
        rows[aid] = row
        print(f"{key} {aid}: INT8 {row['search']['int8_calibrated_table']} float layers for {cfg['target']}: "
              f"{row['search']['float_layers_for_target']}", flush=True)
    timings["total_s"] = time.perf_counter() - t0
    return {"model": key, "model_sha256": file_sha(model),
            "data": {"search": search_set, "calibration_images": cfg["images"], "search_images": cfg["inference"],
                     "held_out": held_set or f"{search_set} minus the search images", "held_out_n": len(sets["held_out"]),
                     "bc_images": cfg["bc_inference_num"]},
            "rows": rows, "timings": timings}


def _n(v, maxn):
    return f"> {maxn}" if v is None else str(v)


def markdown(results: list[dict], cfg: dict) -> str:
    out = []
    for res in results:
        m = cfg["max_float_layers"]
        out += [f"#### {res['model']} ({res['data']['calibration_images']} calibration / {res['data']['search_images']} "
                f"search images of `{res['data']['search']}`; held-out {res['data']['held_out_n']})", "",
                "| aids | aided FP32 vs original FP32 | all-INT8 vs aided FP32 | all-INT8 vs original FP32 | float layers "
                f"for {cfg['target']} (vs aided / original FP32) | held-out: all-INT8 vs original, float layers |",
                "|---|---|---|---|---|---|"]
        for aid, r in res["rows"].items():
            s, h = r["search"], r["held_out"]
            out.append(f"| {aid} | {s['aided_fp32_vs_original_fp32']:.6f} | {s['int8_calibrated_table']['aided_fp32']:.6f} | "
                       f"{s['int8_calibrated_table']['original_fp32']:.6f} | "
                       f"{_n(s['float_layers_for_target']['aided_fp32'], m)} / "
                       f"{_n(s['float_layers_for_target']['original_fp32'], m)} | "
                       f"{h['int8_calibrated_table']['original_fp32']:.6f}, "
                       f"{_n(h['float_layers_for_target']['original_fp32'], m)} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    cfg, out, work = driver_args(EXPERIMENT, __doc__, argv)
    results = run_models(EXPERIMENT, cfg, out, work, run_model)
    (out / "summary.md").write_text(markdown(results, cfg))
    print(markdown(results, cfg), flush=True)


if __name__ == "__main__":
    main()
