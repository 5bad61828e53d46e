"""Experiment 4, calibration ablation: which calibration table gives the best all-INT8 network?

    python experiments/calibration_ablation.py [--models efficientnet_lite0,mnist_mbv2] [--work DIR] [--out DIR]
                                               (config: configs/calibration_ablation.json)

Per model, one calibration pass over the first ``images`` images of the seeded shuffle of the search folder
(the same images the seed table and the searches calibrate on) computes, for both histogram schemes (``v2``:
run_calibration's one-pass streaming merge, ``v1``: an abs-max pass then one histogram width, what
run_sensitive_layer's per-method tables use), the thresholds of MAX, Percentile9999, KL and MSE, untuned
(``.1``) and after TPU-MLIR's SimpleTuner on the first ``tune_num`` images (``_tune``; the tuner only moves
KL and MSE, whose thresholds lie below the max: MAX and Percentile are their own upper bound and come back
unchanged).  Each of the 16 tables is written in TPU-MLIR's format and scored as an all-INT8 network
(no float layer) on the held-out and labelled images of the seed table (``common.FOLDERS``): similarity
(0.5+0.5cos), plain cosine, top-1 agreement with FP32, labelled top-1/top-5 with bootstrap 95 % intervals.
Writes ``results/calibration_ablation/<model>.json``, ``summary.md`` and ``calibration_ablation.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import qsens  # noqa: F401  (first: hostmem's malloc policy)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.common import Evaluator, driver_args, file_sha, model_folders, run_models  # noqa: E402

EXPERIMENT = "calibration_ablation"
METHODS = ("max", "percentile9999", "kl", "mse")
HISTS = ("v2", "v1")


def run_model(key: str, cfg: dict, work: Path) -> dict:
    from qsens.calibrate import calibrate_multi, write_tables
    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import make_preprocess, preset_for_model
    from qsens.zoo import zoo_path

    search_set, held_set, lab_set = model_folders(key)
    model = str(zoo_path(f"{key}.onnx"))
    folder = str(zoo_path(search_set))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pool = select_files(folder, input_num=0, seed=cfg["seed"])
    cal_files = pool[: cfg["images"]]
    held = pool[cfg["inference"]:] if held_set is None else select_files(str(zoo_path(held_set)), input_num=0)
    fn, _ = to_jax(model, None)
    pp = make_preprocess(fn.graph, preset=preset_for_model(model))
    specs = [(METHODS, h, METHODS) for h in HISTS]
    cals = calibrate_multi(fn.model, cal_files, pp, specs=specs, tune_num=cfg["tune_num"], progress=False)
    t_cal = time.perf_counter() - t0
    tables = {}
    for h, cal in zip(HISTS, cals):
        for p in write_tables(cal, str(work / h / "cali_table"), main_method=None, mlir=Path(model).name):
            name = Path(p).name.removeprefix("cali_table_")
            tables[f"{h} {name}"] = Path(p)
    ev = Evaluator(model, {"held_out": held, "labelled": select_files(str(zoo_path(lab_set)), input_num=0)},
                   n_boot=cfg["n_boot"], boot_seed=cfg["seed"])
    rows = {}
    for name, table in tables.items():
        held_r = ev.evaluate(table, [], "held_out", ci=True)
        held_r.pop("labelled", None)
        rows[name] = {"held_out": held_r, "labelled": ev.evaluate(table, [], "labelled", ci=True).get("labelled")}
    fp32 = ev.fp32(next(iter(tables.values())), "labelled", ci=True).get("labelled")
    return {"model": key, "model_sha256": file_sha(model), "data": {"search": search_set, "calibration_images": len(cal_files),
                                   "tune_num": cfg["tune_num"], "held_out_n": len(held), "labelled": lab_set},
            "fp32_labelled": fp32, "rows": rows,
            "timings": {"calibration_s": t_cal, "total_s": time.perf_counter() - t0}}


def markdown(results: list[dict]) -> str:
    out = []
    for res in results:
        best = max(res["rows"], key=lambda k: res["rows"][k]["held_out"]["similarity"])
        out += [f"#### {res['model']} (all-INT8; {res['data']['calibration_images']} calibration images, tuner on "
                f"{res['data']['tune_num']}; held-out {res['data']['held_out_n']}; best: {best})", "",
                "| table | similarity (held-out) | plain cosine | top-1 agreement | labelled top-1 % [95 % CI] |",
                "|---|---|---|---|---|"]
        for name, r in res["rows"].items():
            h, lab = r["held_out"], r["labelled"]
            acc = "-" if not lab else (f"{100 * lab['top1']:.1f} [{100 * lab['top1_ci95'][0]:.1f}, "
                                       f"{100 * lab['top1_ci95'][1]:.1f}]")
            out.append(f"| {name} | {h['similarity']:.6f} | {h['cosine']:.6f} | {h.get('top1_agreement', 0):.3f} | "
                       f"{acc} |")
        out.append("")
    return "\n".join(out)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        for i, h in enumerate(HISTS):
            for j, tuned in enumerate((".1", "_tune")):
                names = [f"{h} {m}{tuned}" for m in METHODS]
                ys = [res["rows"][n]["held_out"]["similarity"] for n in names]
                xs = [k + 0.2 * (2 * i + j) - 0.3 for k in range(len(METHODS))]
                ax.bar(xs, ys, width=0.18, label=f"hist {h}, {'tuned' if tuned == '_tune' else 'untuned'}")
        ax.set_xticks(range(len(METHODS)), METHODS)
        lo = min(r["held_out"]["similarity"] for r in res["rows"].values())
        ax.set_ylim(max(0.0, lo - 0.02), 1.0)
        ax.set_title(f"{res['model']}: all-INT8 similarity (held-out)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    cfg, out, work = driver_args(EXPERIMENT, __doc__, argv, "where the tables are written")
    results = run_models(EXPERIMENT, cfg, out, work, run_model)
    (out / "summary.md").write_text(markdown(results))
    plot(results, out / "calibration_ablation.png")
    print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
