"""Leave-one-in sensitivity with onnxruntime.quantization (the script a user writes without qsens) and the whole
``qsens search`` job, on the same model and images, in one run.

    python benchmarks/vs_onnxruntime.py [--images 100 --inference 30] [--quick]

onnxruntime side (in this process, its imports excluded): the calibration and inference images loaded with
qsens's own loading functions (same files, same preprocessed NCHW float32 arrays), the float model's outputs,
one MinMax calibration (``create_calibrator`` / ``collect_data`` / ``compute_data``, the ranges saved with
``save_tensors_data`` and reused by every ``quantize_static(calibration_cache_path=...)``), then for each
Conv / Add / Gemm / MatMul node: ``quantize_static(nodes_to_quantize=[node])`` (QDQ, per-tensor, int8 weights and
symmetric int8 activations), a new ``InferenceSession``, the inference images in one batch, score
1 - mean cosine against the float outputs.  CPU time of this process over those phases gives the cores it used.

qsens side: ``python -m qsens search MODEL --dataset DIR --input_num N --inference_num M --expected_cos 0.9999``
(the demo's flags; 0.9999 so that no run stops early) as a fresh process, the 3 default methods and
``--methods max``; the first run of each fills an empty JAX compilation cache ("cold"), the second is measured warm.
Wall time and user+sys CPU time per process from ``os.wait4``.

Ratios qsens / onnxruntime (whole jobs); bars (issue): 3 methods <= 0.5x, max <= 0.3x (goal 0.25x).
``--quick`` (10 / 5 images, the first 5 candidates, onnxruntime's total extrapolated to all candidates) is a
smoke check and writes no result file unless ``--json`` is given.
Writes benchmarks/results/vs_onnxruntime_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, search_job_cmd, write  # noqa: E402

CANDIDATE_OPS = ("Conv", "Add", "Gemm", "MatMul")
BARS = {"qsens_3_methods_over_ort": 0.5, "qsens_max_over_ort": 0.3, "qsens_max_over_ort_goal": 0.25}


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def dirty_files() -> list[str]:
    """Uncommitted files under qsens/ (the subprocesses run the working tree, not the recorded git revision)."""
    try:
        out = subprocess.check_output(["git", "status", "--porcelain", "--", "qsens"], text=True,
                                      cwd=Path(__file__).resolve().parents[1])
    except Exception:  # noqa: BLE001
        return ["unknown"]
    return [line[3:] for line in out.splitlines() if line.strip()]


def load_images(model: Path, images: Path, n_cal: int, n_inf: int):
    """The arrays ``qsens search`` feeds its model: its file selection (seed 1684), its preset, its loader."""
    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import load_inputs, make_preprocess, preset_for_model

    fn, _ = to_jax(str(model))
    g = fn.graph
    cal_files = select_files(dataset=str(images), input_num=n_cal)
    inf_files = select_files(dataset=str(images), input_num=0)[:n_inf]
    pp = make_preprocess(g, preset=preset_for_model(str(model)))
    t = time.perf_counter()
    cal = load_inputs(cal_files, g, pp)[g.inputs[0]]
    inf = load_inputs(inf_files, g, pp)[g.inputs[0]]
    return g.inputs[0], cal, inf, time.perf_counter() - t, {"preset": preset_for_model(str(model)), "pp": repr(pp)}


def mean_cos(a, b) -> float:
    import numpy as np

    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.mean())


def ort_leave_one_in(model: Path, input_name: str, cal, inf, max_candidates: int | None, work: Path,
                     batch: int = 10) -> dict:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        create_calibrator,
        quantize_static,
        save_tensors_data,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's "consider pre-processing" warning, per call
    so = ort.SessionOptions()
    so.log_severity_level = 3

    class Reader(CalibrationDataReader):
        def __init__(self, x):
            self.batches = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self.batches, None)

    graph = onnx.load(str(model)).graph
    nodes = [n.name for n in graph.node if n.op_type in CANDIDATE_OPS]
    n_all = len(nodes)
    nodes = nodes[:max_candidates] if max_candidates else nodes
    load_before = os.getloadavg()[0]
    c0, t0 = cpu_self(), time.perf_counter()

    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {input_name: inf})[0]
    t_ref = time.perf_counter() - t0

    t = time.perf_counter()
    cache = work / "ort_calibration.json"
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's default op_types_to_quantize
    calibrator = create_calibrator(model, op_types, augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax,
                                   extra_options={"symmetric": True})  # = ActivationSymmetric
    calibrator.collect_data(Reader(cal))
    save_tensors_data(calibrator.compute_data(), cache)
    del calibrator
    t_cal = time.perf_counter() - t

    per, scores = [], {}
    qpath = work / "candidate.onnx"
    for name in nodes:
        t = time.perf_counter()
        quantize_static(str(model), str(qpath), None, calibration_cache_path=cache, quant_format=QuantFormat.QDQ,
                        per_channel=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=[name], calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        tq = time.perf_counter() - t
        s = ort.InferenceSession(str(qpath), so, providers=["CPUExecutionProvider"])
        ts = time.perf_counter() - t - tq
        out = s.run(None, {input_name: inf})[0]
        scores[name] = 1.0 - mean_cos(ref, out)
        per.append({"node": name, "quantize_s": tq, "session_s": ts, "run_s": time.perf_counter() - t - tq - ts,
                    "total_s": time.perf_counter() - t})
    wall = time.perf_counter() - t0
    cpu = cpu_self() - c0
    cand_s = sum(p["total_s"] for p in per)
    mean_cand = cand_s / len(per)
    return {
        "version": ort.__version__, "load_avg_1m_before": load_before, "intra_op_threads_default": so.intra_op_num_threads,
        "candidates_total": n_all, "candidates_run": len(nodes),
        "float_reference_s": t_ref, "calibration_s": t_cal, "candidates_s": cand_s, "per_candidate_mean_s": mean_cand,
        "per_candidate_mean_breakdown_s": {k: sum(p[k] for p in per) / len(per) for k in ("quantize_s", "session_s",
                                                                                            "run_s")},
        "wall_s": wall, "cpu_s": cpu, "cores_used": cpu / wall,
        # all candidates: measured in a full run, extrapolated from the mean in --quick
        "wall_all_candidates_s": wall + (n_all - len(nodes)) * mean_cand,
        "scores": scores, "most_sensitive": sorted(scores, key=scores.get, reverse=True)[:10],
        "per_candidate": per,
    }


def snapshot(rev: str, dest: Path) -> str:
    """``git archive REV qsens`` into ``dest`` (so the runs use that revision, not a working tree others edit)."""
    root = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True)
    tar = subprocess.run(["git", "archive", rev, "qsens"], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return subprocess.check_output(["git", "rev-parse", "--short", rev], cwd=root, text=True).strip()


def run_qsens(model: Path, images: Path, n_cal: int, n_inf: int, out_dir: Path, cache_dir: Path, extra=(),
              src: Path | None = None) -> dict:
    env = dict(os.environ, QSENS_JAX_CACHE=str(cache_dir), SOURCE_DATE_EPOCH="1700000000")
    if src is not None:  # the exported revision first on the path (cwd too: `python -m` puts it first)
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = search_job_cmd(model, images, n_cal, n_inf, out_dir, extra)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as log:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=src)
        _, status, ru = os.wait4(p.pid, 0)  # this child's own user + sys CPU time
        # (not its ru_maxrss: that counts the forked copy of this large parent before the exec)
        wall = time.perf_counter() - t
        log.seek(0)
        out = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"qsens failed: {' '.join(cmd)}\n{out[-3000:]}")
    res = json.loads((out_dir / "search.json").read_text())
    cpu = ru.ru_utime + ru.ru_stime
    # its "total time:" line: "(calibration X s on C cores, search Y s on C cores, ..." (older trees: no cores)
    m = re.search(r"\(calibration ([\d.]+) s(?: on [\d.]+ cores)?, search ([\d.]+) s", out)
    return {"cmd": " ".join(["python", *cmd[1:]]), "load_avg_1m_before": load_before, "wall_s": wall,
            "calibration_s": float(m[1]) if m else None, "search_s": float(m[2]) if m else None,
            "cpu_s": cpu, "cores_used": cpu / wall, "timings": res["timings"], "float_layers": res["float_layers"],
            "n_candidates": res["n_candidates"], "n_candidates_evaluated": res["n_candidates_evaluated"],
            "stdout_tail": out.strip().splitlines()[-3:]}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--inference", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=0, help="onnxruntime: only the first N candidates (0 = all)")
    ap.add_argument("--quick", action="store_true", help="10 / 5 images, 5 candidates, no result file")
    ap.add_argument("--qsens-rev", help="run `qsens search` from this git revision (exported with git archive) "
                    "instead of the working tree, e.g. HEAD when others have uncommitted changes in qsens/")
    ap.add_argument("--json", help="write the result here (default: benchmarks/results/ unless --quick)")
    a = ap.parse_args(argv)
    if a.quick:
        a.images, a.inference, a.candidates = 10, 5, a.candidates or 5
    from qsens.zoo import zoo_path

    model = zoo_path("efficientnet_lite0.onnx")
    images = zoo_path("images100")
    load_start = os.getloadavg()
    qsens_dirty = [] if a.qsens_rev else dirty_files()
    if qsens_dirty:
        print(f"note: qsens/ has uncommitted changes (the runs use the working tree): {', '.join(qsens_dirty)}")
    mach = machine()
    print(f"{mach['cpu']}, {mach['cores']} cores; load average at start {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="vs_ort_") as td:
        td = Path(td)
        input_name, cal, inf, t_load, pp = load_images(model, images, a.images, a.inference)
        print(f"images: {len(cal)} calibration, {len(inf)} inference, {cal.dtype} {list(cal.shape[1:])}, "
              f"loaded + preprocessed in {t_load:.1f} s ({pp['preset']})")
        ort_r = ort_leave_one_in(model, input_name, cal, inf, a.candidates or None, td)
        ort_r["images_load_s"] = t_load
        ort_total = t_load + ort_r["wall_all_candidates_s"]
        ort_r["whole_job_s"] = ort_total
        print(f"onnxruntime {ort_r['version']}: {ort_r['candidates_run']} of {ort_r['candidates_total']} candidates "
              f"({'/'.join(CANDIDATE_OPS)}); images {t_load:.1f} s + float reference {ort_r['float_reference_s']:.1f} s "
              f"+ MinMax calibration {ort_r['calibration_s']:.1f} s + candidates {ort_r['candidates_s']:.1f} s "
              f"({ort_r['per_candidate_mean_s']:.2f} s each: quantize_static "
              f"{ort_r['per_candidate_mean_breakdown_s']['quantize_s']:.2f} + session "
              f"{ort_r['per_candidate_mean_breakdown_s']['session_s']:.2f} + run "
              f"{ort_r['per_candidate_mean_breakdown_s']['run_s']:.2f}); cores used {ort_r['cores_used']:.2f}")
        print(f"onnxruntime whole job{' (extrapolated to all candidates)' if a.candidates else ''}: {ort_total:.1f} s;"
              f" most sensitive: {', '.join(ort_r['most_sensitive'][:5])}")
        del cal, inf
        src = td / "src" if a.qsens_rev else None
        qsens_rev = snapshot(a.qsens_rev, src) if src else mach["git"]
        runs = {}
        for key, extra in (("3_methods", ()), ("max", ("--methods", "max"))):
            cache = td / f"jax_cache_{key}"
            for phase in ("cold", "warm"):
                r = run_qsens(model, images, a.images, a.inference, td / f"{key}_{phase}", cache, extra, src)
                runs[f"{key}_{phase}"] = r
                print(f"qsens {key} {phase}: {r['wall_s']:.1f} s wall (calibration {r['calibration_s']} s, search "
                      f"{r['search_s']} s), {r['cpu_s']:.1f} s CPU "
                      f"({r['cores_used']:.2f} cores), {r['n_candidates_evaluated']} of {r['n_candidates']} "
                      f"candidates evaluated, float layers {r['float_layers']}")
    load_end = os.getloadavg()
    ratios = {f"qsens_{k}_{p}_over_ort": runs[f"{k}_{p}"]["wall_s"] / ort_total
              for k in ("3_methods", "max") for p in ("cold", "warm")}
    met = {"qsens_3_methods_over_ort": ratios["qsens_3_methods_warm_over_ort"] <= BARS["qsens_3_methods_over_ort"],
           "qsens_max_over_ort": ratios["qsens_max_warm_over_ort"] <= BARS["qsens_max_over_ort"],
           "qsens_max_over_ort_goal": ratios["qsens_max_warm_over_ort"] <= BARS["qsens_max_over_ort_goal"]}
    # by phase (informative, not the bars): qsens's calibration (KL base + per-method tables) vs onnxruntime's MinMax
    # calibration; qsens's search vs onnxruntime's candidate loop (quantize_static + session + run, all candidates)
    phases = {}
    for k in ("3_methods", "max"):
        r = runs[f"{k}_warm"]
        if r["calibration_s"] is not None:
            phases[f"qsens_{k}_warm_calibration_over_ort_calibration"] = r["calibration_s"] / ort_r["calibration_s"]
            phases[f"qsens_{k}_warm_search_over_ort_candidates"] = r["search_s"] / (
                ort_r["per_candidate_mean_s"] * ort_r["candidates_total"])
    for k, v in {**ratios, **phases}.items():
        print(f"{k}: {v:.3f}")
    print(f"bars (warm): 3 methods <= 0.5x {'met' if met['qsens_3_methods_over_ort'] else 'NOT met'}; max <= 0.3x "
          f"{'met' if met['qsens_max_over_ort'] else 'NOT met'} (goal 0.25x "
          f"{'met' if met['qsens_max_over_ort_goal'] else 'not met'}); load average at end {load_end[0]:.2f} "
          f"{load_end[1]:.2f} {load_end[2]:.2f}")
    data = {
        "benchmark": "leave-one-in INT8 sensitivity, EfficientNet-Lite0: onnxruntime.quantization script vs qsens search",
        "quick": a.quick, "images": a.images, "inference": a.inference, "preprocess": pp,
        "onnxruntime": ort_r, "qsens": runs, "ratios": ratios, "phase_ratios": phases, "bars": BARS, "bars_met_warm": met,
        "load_average": {"start": load_start, "end": load_end},
        "machine": {**mach, "platform": platform.platform()},
        "versions": {"onnxruntime": ort_r["version"], "jax": mach["jax"], "qsens_git": qsens_rev,
                     "qsens_source": f"git archive {a.qsens_rev}" if a.qsens_rev else "working tree",
                     "qsens_uncommitted": qsens_dirty},
        "notes": "onnxruntime times exclude its imports and the process start; qsens times are whole processes "
                 "(interpreter start, imports, model conversion, its own calibration of the KL base table and the "
                 "per-method tables, the search). Both are leave-one-in (one layer INT8, the rest float, loss = "
                 "1 - similarity to the float model): onnxruntime with QDQ per-tensor MinMax ranges, one method; "
                 "qsens with BM1684 INT8 simulation and each method's table.",
    }
    if a.json or not a.quick:
        out = Path(a.json) if a.json else None
        if out:
            out.write_text(json.dumps(data, indent=1) + "\n")
        else:
            out = write("vs_onnxruntime", data)
        print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
