"""Experiment 1, the seed's table: FLOAT / INT8 / MIX(original table) / MIX(new table) on real models.

TPU-MLIR's post on the sensitive-layer search reports, for MobileNetV2 on ImageNet, top-1 70.72 (FLOAT) /
67.53 (INT8) / 68.19 (MIX, original table) / 69.07 (MIX, new table) with one float layer, and output
similarity 0.978847 -> 0.989741.  This driver makes the same table with qsens on the zoo's models:

    python experiments/seed_table.py [--models efficientnet_lite0,efficientnet_lite2,mnist_mbv2]
                                     [--work DIR] [--out DIR]          (config: configs/seed_table.json)

Per model, ``qsens search`` (TPU-MLIR's ``run_sensitive_layer``: KL/MAX/Percentile per op, 1 - cos) runs on the
search folder with ``images`` calibration and ``inference`` search images and ``--max_float_layers`` the largest
count of the config, writing the original (KL-tuned) table, the new table and the ranked qtable.  Then every row
is scored exactly on images the search never saw:

* ``held_out``: similarity (0.5+0.5cos), plain cosine and top-1 agreement with FP32.  ImageNet models: the other
  70 images of ``images100/`` (augmented crops of the same photos); MNIST: the 1,000 held-out digits.
* ``labelled``: top-1/top-5 with percentile-bootstrap 95 % intervals.  ImageNet models: the labelled real photos
  of ``images/`` (foolbox's 20 ImageNet validation images and 6 more with known classes: a sample, never the
  model's ImageNet accuracy); MNIST: the same 1,000 held-out digits.

Rows: FLOAT; INT8 (original table); INT8 (new table); for each N in ``float_layers``: MIX(original table) and
MIX(new table) with the first N layers of the search's qtable in float.  Writes
``results/seed_table/<model>.json`` and ``results/seed_table/summary.md`` (the Markdown table README and paper
use).  A killed run resumes with the same ``--work``.
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
    sensitive_search,
)

EXPERIMENT = "seed_table"
SEED_POST = {"model": "MobileNetV2 (TPU-MLIR post)", "top1": {"FLOAT": 70.72, "INT8": 67.53, "MIX original table": 68.19,
                                                             "MIX new table": 69.07},
             "similarity": {"INT8": 0.978847, "MIX new table": 0.989741}, "float_layers": 1}


def run_model(key: str, cfg: dict, work: Path) -> dict:
    from qsens.data.dataset import select_files
    from qsens.zoo import zoo_path

    search_set, held_set, lab_set = model_folders(key)
    model = str(zoo_path(f"{key}.onnx"))
    folder = str(zoo_path(search_set))
    t0 = time.perf_counter()
    d, wall = sensitive_search(model, folder, cfg, work, max(cfg["float_layers"]))
    order = qtable_ops(d / "qtable")
    pool = select_files(folder, input_num=0, seed=cfg["seed"])
    held = pool[cfg["inference"]:] if held_set is None else select_files(str(zoo_path(held_set)), input_num=0)
    lab = select_files(str(zoo_path(lab_set)), input_num=0)
    sets = {"held_out": held, "labelled": lab}
    ev = Evaluator(model, sets, n_boot=cfg["n_boot"], boot_seed=cfg["seed"])
    tables = {"original": d / "cali_table", "new": d / "new_cali_table.txt"}
    rows: dict = {}

    def row(name: str, table: Path, float_layers: list[str], fp32: bool = False) -> None:
        score = (lambda w: ev.fp32(table, w, ci=True)) if fp32 else (lambda w: ev.evaluate(table, float_layers, w,
                                                                                         ci=True))
        held = score("held_out")
        held.pop("labelled", None)  # labelled accuracy is the "labelled" set's (for MNIST the same images)
        rows[name] = {"float_layers": float_layers, "held_out": held, "labelled": score("labelled").get("labelled")}

    row("FLOAT", tables["original"], [], fp32=True)
    row("INT8", tables["original"], [])
    row("INT8 new table", tables["new"], [])
    for n in cfg["float_layers"]:
        row(f"MIX original table, {n} float", tables["original"], order[:n])
        row(f"MIX new table, {n} float", tables["new"], order[:n])
    sj = json.loads((d / "search.json").read_text())
    return {
        "seed_post": SEED_POST,
        "model": key,
        "model_sha256": file_sha(model),
        "data": {"search": search_set, "calibration_images": cfg["images"], "search_images": cfg["inference"],
                 "held_out": held_set or f"{search_set} minus the search images", "held_out_n": len(held),
                 "labelled": lab_set, "labelled_n": ev.labels["labelled"] and sum(v is not None for v in
                                                                                   ev.labels["labelled"])},
        "qtable": order,
        "search_reported": {"int8": sj["summary"]["int8"]["similarity"],
                            "mix_new_table": sj["summary"]["mix_new_table"]["similarity"]},
        "rows": rows,
        "timings": {"search_wall_s": wall, "total_s": time.perf_counter() - t0},
    }


def fmt_rate(r: dict | None, k: str) -> str:
    if not r or r.get(k) is None:
        return "-"
    lo, hi = r[f"{k}_ci95"]
    return f"{100 * r[k]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(results: list[dict]) -> str:
    """The seed's table per model (the rows README and the paper show)."""
    out = []
    for res in results:
        dt = res["data"]
        out += [f"#### {res['model']} (search: {dt['calibration_images']} calibration / {dt['search_images']} search "
                f"images of `{dt['search']}`; held-out {dt['held_out_n']}; labelled {dt['labelled_n']} of "
                f"`{dt['labelled']}`)", "",
                "| model | similarity (held-out) | plain cosine | top-1 agreement | labelled top-1 % [95 % CI] | "
                "labelled top-5 % [95 % CI] |", "|---|---|---|---|---|---|"]
        for name, r in res["rows"].items():
            h = r["held_out"]
            out.append(f"| {name} | {h['similarity']:.6f} | {h['cosine']:.6f} | "
                       f"{h.get('top1_agreement', float('nan')):.3f} | {fmt_rate(r['labelled'], 'top1')} | "
                       f"{fmt_rate(r['labelled'], 'top5')} |")
        out.append("")
        out.append(f"float layers (the search's order): {', '.join(res['qtable'])}")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    cfg, out, work = driver_args(EXPERIMENT, __doc__, argv)
    results = run_models(EXPERIMENT, cfg, out, work, run_model)
    (out / "summary.md").write_text(markdown(results))
    print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
