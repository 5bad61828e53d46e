#!/usr/bin/env python3
"""Run the real TPU-MLIR on one model and collect everything qsens is compared with.

    python reference/tpu_mlir/run.py MODEL.onnx --dataset DIR --out OUT [TPU-MLIR flags]

Runs, in the harness venv built by ``setup.sh`` (any Python can start this script; it re-runs itself
under the harness interpreter):

1. ``model_transform.py``  -> ``ops.json`` (the Top-dialect op list: name, type, operands, in order)
2. ``run_calibration.py``   -> ``cali_table`` (default method: KL + SimpleTuner) and ``cali_table_<m>`` for
   ``--cali_methods`` (default max, percentile9999, mse)
3. ``run_sensitive_layer.py`` (``--steps sensitive``) -> ``sensitive/``: qtable, new_cali_table.txt, the
   per-method tables ``cali_table_<M>.1`` / ``_tune`` it generates, its log (``SensitiveLayerSearcher``,
   the repeated preprocessing banners dropped) and ``summary.json`` (all-INT8 / mix similarity, per-op
   losses, float layers, wall time)
4. ``--steps qtable``: ``run_qtable.py`` (the greedy ``MixPrecSearcher``: per op in order, a layer cos below
   ``--min_layer_cos`` sets it and its next Top ops to float, stops when the outputs cos passes
   ``--expected_cos`` or over a quarter of the ops are float, reverts a step that lowers the outputs cos below
   the all-INT8 one) with ``--input_num`` = ``--inference_num`` -> ``run_qtable/``: qtable,
   full_loss_table.txt, its log (``MixPrecSearcher``), ``mix_prec_result`` (the graphviz source it writes: one
   node per op of the INT8 model, its label holding every decision), ``tmp_mix_table.txt`` (the last mix
   table tried) and ``summary.json`` (all-INT8 / mix cos, layer cos in evaluation order, the float steps,
   the float layers, the samples used, the full op list it iterates, wall time)
5. ``--steps dump``: lowers the Top MLIR to the BM1684 INT8 TPU dialect with ``cali_table`` (the same
   ``tpuc-opt`` pipeline the searches use), preprocesses the first ``--dump_num`` samples of TPU-MLIR's
   own data selection with TPU-MLIR's preprocessing, runs its interpreter (``pymlir``) on the INT8 model
   with fixed-point outputs and on the F32 Top model, and writes ``int8/``: ``inputs.npz`` (the
   preprocessed samples), ``qinfo.json`` (per tensor: storage type, scale, zero point), ``int8.npz``
   (integer codes of every quantized tensor, float values of tensors the INT8 model keeps in F32) and
   ``f32.npz`` (float outputs).
6. ``--steps deploy`` (after ``dump``): ``model_deploy.py`` to a BM1684 bmodel of ``cali_table`` and
   ``model_runner.py`` on it (the chip simulator, CPU) for the dumped samples -> ``bmodel/outputs.npz``.
7. ``--steps search_qtable`` / ``search_threshold``: ``run_calibration.py --search ...`` (the newer searchers; use
   ``--version 1.30.2`` for the newest release) -> ``search_qtable/`` / ``search_threshold/`` with the tables,
   qtable and logs it writes.

``meta.json`` records the TPU-MLIR version, every command line and its wall time. Nothing here is part of
the normal test run; ``tests/fixtures/tpu_mlir/`` holds what this script produced, and
``tests/test_tpu_mlir_oracle.py`` compares qsens with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HOME = Path(os.environ.get("QSENS_TPU_MLIR_HOME", Path.home() / ".cache/qsens/tpu_mlir"))
STEPS = ("transform", "calibrate", "sensitive", "qtable", "dump", "deploy", "search_qtable", "search_threshold")


def venv_python(version: str) -> Path:
    return HOME / version / "bin" / "python"


def harness_env(version: str) -> dict[str, str]:
    """The environment TPU-MLIR's ``__init__`` would set up, for subprocesses (tools and pymlir)."""
    site = next((HOME / version / "lib").glob("python3.10/site-packages"))
    t = site / "tpu_mlir"
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(HOME / version / "bin"), f"{t}/bin", f"{t}/python/tools", env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(t), f"{t}/python", f"{t}/regression"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([f"{t}/lib", f"{t}/lib/capi", f"{t}/lib/third_party"])
    env["TPUC_ROOT"] = str(t)
    env.setdefault("OMP_NUM_THREADS", "4")
    env.pop("VIRTUAL_ENV", None)
    return env


def _in_harness(version: str) -> bool:
    try:
        return Path(sys.executable).resolve() == venv_python(version).resolve() and "TPUC_ROOT" in os.environ
    except OSError:
        return False


class Runner:
    def __init__(self, out: Path, version: str):
        self.out, self.version = out, version
        self.env = harness_env(version)
        self.meta: dict = {"tpu_mlir": version, "commands": []}

    def run(self, cmd: list[str], cwd: Path, log: str) -> float:
        t0 = time.time()
        with open(cwd / log, "w") as f:
            rc = subprocess.call(cmd, cwd=cwd, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        dt = time.time() - t0
        self.meta["commands"].append({"cmd": " ".join(cmd), "cwd": str(cwd.relative_to(self.out.parent))
                                      if cwd.is_relative_to(self.out.parent) else str(cwd), "wall_s": round(dt, 2), "rc": rc})
        if rc != 0:
            tail = (cwd / log).read_text(errors="replace").splitlines()[-15:]
            sys.exit(f"run.py: {cmd[0]} failed (rc {rc}); log {cwd / log}:\n" + "\n".join(tail))
        return dt


def preprocess_flags(a) -> list[str]:
    f = []
    for k in ("input_shapes", "resize_dims", "mean", "scale", "pixel_format", "channel_format", "keep_ratio_mode",
              "pad_value", "pad_type"):
        v = getattr(a, k)
        if v is not None:
            f += [f"--{k}", str(v)]
    if a.keep_aspect_ratio:
        f.append("--keep_aspect_ratio")
    return f


def data_flags(a) -> list[str]:
    return ["--data_list", a.data_list] if a.data_list else ["--dataset", a.dataset]


def op_list(mlir: Path) -> list[dict]:
    from utils.mlir_parser import MlirParser  # harness interpreter only

    p = MlirParser(str(mlir))
    return [{"name": op.name, "type": op.type, "operands": list(op.opds)} for op in p.ops]


def clean_log(src: Path, dst: Path) -> None:
    """The searcher's log without the preprocessing banner it repeats for every model it loads."""
    out, skip = [], False
    for line in src.read_text(errors="replace").splitlines():
        if "load_config Preprocess args" in line:
            skip = True
            continue
        if skip and (line.startswith("\t") or not line.strip()):
            continue
        skip = False
        if line == "INFO:root:":
            continue
        out.append(line)
    dst.write_text("\n".join(out) + "\n")


def parse_search(log: str, stdout: str) -> dict:
    s: dict = {"layers": {}, "ranking": []}
    for m in re.finditer(r"layer (\S+), layer type is (\S+), best_th = (\S+), best_method = (\S+), best_cos_loss = (\S+)", log):
        s["layers"][m[1]] = {"type": m[2], "best_th": float(m[3]), "best_method": m[4], "loss": float(m[5])}
    cur = None
    for line in log.splitlines():
        m = re.search(r"adjust layer (\S+) th, with method (\S+), and threshlod (\S+)", line)
        if m:
            cur = (m[1], m[2], float(m[3]))
            continue
        m = re.search(r"outputs_cos_los = (\S+)", line)
        if m and cur:
            s["layers"].setdefault(cur[0], {}).setdefault("methods", {})[cur[1]] = {"th": cur[2], "loss": float(m[1])}
            cur = None
    s["ranking"] = re.findall(r"the layer (\S+) is \d+ sensitive layer", log)
    m = re.search(r"set_fp_layer_list = (\[.*\])", log)
    s["float_layers"] = json.loads(m[1].replace("'", '"')) if m else []
    for key, pat in (("all_int8_cos", r"all_int8_cos=(\S+)"), ("int8_outputs_cos", r"int8 outputs_cos:(\S+) old"),
                     ("mix_outputs_cos", r"mix model outputs_cos:(\S+)"), ("total_time", r"total time:(\S+)")):
        m = re.search(pat, log + "\n" + stdout)
        s[key] = float(m[1]) if m else None
    return s


def parse_dot(text: str) -> list[dict]:
    """The nodes of the graphviz source ``net_dot_log`` writes: idx, name, type and label lines, by idx."""
    nodes = []
    for m in re.finditer(r'^\s*(?:"(?:[^"\\]|\\.)*"|\S+) \[label="((?:[^"\\]|\\.)*)"', text, re.M):
        label = m[1].replace('\\"', '"')
        head, _, rest = label.partition("\n")
        h = re.match(r"idx:(\d+)  name:(.*)  type:(\S*)$", head)
        if not h:
            continue
        lines = [l for l in rest.split("\\l") if l.strip()]
        nodes.append({"idx": int(h[1]), "name": h[2], "type": h[3], "labels": lines})
    return sorted(nodes, key=lambda n: n["idx"])


def parse_qtable_run(log: str, dot: str, full_op_list: list[str]) -> dict:
    """summary.json of the qtable step: what run_qtable.py decided, from its log and the dot labels."""
    s: dict = {}
    for key, pat in (("all_int8_cos", r"int8 outputs_cos:(\S+) old"), ("mix_outputs_cos", r"mix model outputs_cos:(\S+)"),
                     ("early_exit_int8_cos", r"job success, current int8 cos:(\S+) is higher"), ("total_time", r"total time:(\S+)")):
        m = re.search(pat, log)
        s[key] = float(m[1]) if m else None
    s["exceptions"] = re.findall(r"An exception happened: (.*)", log)
    nodes = {n["name"]: n for n in parse_dot(dot)}
    order = [n for n in full_op_list if n in nodes] + sorted((n for n in nodes if n not in full_op_list),
                                                             key=lambda n: nodes[n]["idx"])
    s["layer_cos"], s["steps"], s["op_notes"] = [], [], {}
    for name in order:
        labels = nodes[name]["labels"]
        s["op_notes"][name] = [l for l in labels if not l.startswith(">>>")]
        cos = [float(m[1]) for l in labels for m in [re.match(r"int8 layer cos:(\S+)$", l)] if m]
        if cos:
            s["layer_cos"].append([name, cos[0]])
        for i, l in enumerate(labels):
            m = re.match(r"cos too low, set \S+ to (.*) and next_top_ops:(.*)$", l)
            if not m:
                continue
            st = {"op": m[1], "next_ops": [x for x in m[2].split(",") if x], "layer_cos": cos[0] if cos else None,
                  "first_float_layer_cos": None, "outputs_cos": None, "reverted": False, "result": None}
            for l2 in labels[i + 1:]:
                if (m2 := re.match(r"first \S+ layer:.* cos:(\S+)$", l2)):
                    st["first_float_layer_cos"] = float(m2[1])
                elif (m2 := re.match(r"current output cos:(\S+)$", l2)):
                    st["outputs_cos"] = float(m2[1])
                elif l2.startswith("meet outputs_cos:"):
                    st["reverted"] = True
                elif l2.startswith("job success"):
                    st["result"] = "success"
                elif l2.startswith("job fail"):
                    st["result"] = "fail"
            s["steps"].append(st)
    return s


def dump(a, r: Runner, name: str) -> None:
    import numpy as np
    import pymlir
    from calibration.data_selector import DataSelector
    from utils.mlir_parser import MlirParser
    from utils.mlir_shell import mlir_lowering
    from utils.preprocess import preprocess

    work = a.out / "work"
    d = a.out / "int8"
    d.mkdir(exist_ok=True)
    table = a.out / "cali_table"
    lowered = work / f"{name}_bm1684_int8.mlir"
    t0 = time.time()
    os.chdir(work)  # the lowered MLIR names its weight file relative to the working directory
    mlir_lowering(f"{name}.mlir", lowered.name, "INT8", a.chip, cali_table=str(table))
    r.meta["commands"].append({"cmd": f"mlir_lowering {name}.mlir INT8 {a.chip} cali_table", "wall_s": round(time.time() - t0, 2)})
    parser = MlirParser(str(work / f"{name}.mlir"))
    ds = DataSelector(a.dataset, a.input_num, a.data_list)
    files = ds.data_list[: a.dump_num]
    inputs: dict[str, list] = {}
    for i in range(len(parser.inputs)):
        pp = preprocess()
        pp.load_config(parser.get_input_op_by_idx(i))
        iname = parser.inputs[i].name
        for f in files:
            inputs.setdefault(iname, []).append(pp.run(f.split(",")[i].strip()))
    np.savez_compressed(d / "inputs.npz", **{k: np.concatenate(v) for k, v in inputs.items()})
    pymlir.set_mem_mode("value_mem")

    def run_model(path, fixed):
        m = pymlir.module()
        m.load(str(path))
        res = []
        for s in range(len(files)):
            for k in m.input_names:
                x = inputs[k][s].astype(np.float32)
                m.set_tensor(k, x, x.shape)
            m.invoke(not fixed)
            res.append({k: np.array(v) for k, v in m.get_all_tensor().items()})
        return m, res

    m8, res8 = run_model(lowered, True)
    qinfo, codes = {}, {}
    for k in res8[0]:
        q = m8.get_tensor_qinfo(k)
        dt = str(q.dtype)
        qinfo[k] = {"dtype": dt, "scale": float(q.scale), "zp": int(q.zp)}
        stack = np.stack([x[k] for x in res8])
        if dt in ("I8", "U8", "I16", "U16"):
            codes[k] = stack.astype({"I8": np.int8, "U8": np.uint8}.get(dt, np.int32))
        else:
            codes[k] = stack.astype(np.float32)
    (d / "qinfo.json").write_text(json.dumps(qinfo, indent=1))
    np.savez_compressed(d / "int8.npz", **codes)
    mf, resf = run_model(work / f"{name}.mlir", False)
    outs = {k: np.stack([x[k] for x in resf]).astype(np.float32) for k in mf.output_names}
    np.savez_compressed(d / "f32.npz", **outs)
    r.meta["dump_files"] = [os.path.relpath(f, a.dataset) if a.dataset else f for f in files]
    shutil.copy(lowered, d / "int8_tpu.mlir.txt") if a.keep_mlir else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--version", default="1.23")
    ap.add_argument("--name", help="model name (default: the file's stem)")
    ap.add_argument("--dataset")
    ap.add_argument("--data_list")
    ap.add_argument("--input_num", type=int, default=0)
    ap.add_argument("--inference_num", type=int, default=10)
    ap.add_argument("--tune_num", type=int, default=5)
    ap.add_argument("--max_float_layers", type=int, default=5)
    ap.add_argument("--expected_cos", type=float, default=0.99)
    ap.add_argument("--min_layer_cos", type=float, default=0.99, help="run_qtable's --min_layer_cos (its default)")
    ap.add_argument("--qtable_dir", default="run_qtable", help="the qtable step's folder in OUT (and OUT/work)")
    ap.add_argument("--qtable_setting", default="", help="why this expected/min_layer_cos, kept in run_qtable/summary.json")
    ap.add_argument("--chip", default="bm1684")
    ap.add_argument("--dump_num", type=int, default=2)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--keep_mlir", action="store_true")
    ap.add_argument("--quantize_method_list", default="MSE", help="search_qtable's methods (TPU-MLIR default MSE)")
    ap.add_argument("--cali_methods", default="max,percentile9999,mse",
                    help="run_calibration --cali_method use_<m> tables written besides the default KL one")
    for k in ("input_shapes", "resize_dims", "mean", "scale", "pixel_format", "channel_format", "keep_ratio_mode",
              "pad_value", "pad_type"):
        ap.add_argument(f"--{k}")
    ap.add_argument("--keep_aspect_ratio", action="store_true")
    a = ap.parse_args(argv)
    if not _in_harness(a.version):
        py = venv_python(a.version)
        if not (HOME / a.version / ".complete").exists():
            sys.exit(f"run.py: no TPU-MLIR {a.version} harness in {HOME / a.version}; run bash reference/tpu_mlir/setup.sh {a.version}")
        os.execve(str(py), [str(py), os.path.abspath(__file__), *sys.argv[1:]], harness_env(a.version))
    a.out = a.out.resolve()
    a.dataset = os.path.abspath(a.dataset) if a.dataset else None
    a.data_list = os.path.abspath(a.data_list) if a.data_list else None
    model = Path(a.model).resolve()
    if not model.is_file():
        sys.exit(f"run.py: model {model} not found")
    name = a.name or model.stem
    steps = [s.strip() for s in a.steps.split(",") if s.strip()]
    bad = sorted(set(steps) - set(STEPS))
    if bad:
        sys.exit(f"run.py: unknown step(s) {bad}; choose from {STEPS}")
    work = a.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    r = Runner(a.out, a.version)
    meta_path = a.out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        r.meta.update({k: v for k, v in old.items() if k != "commands"})
        r.meta["commands"] = [c for c in old.get("commands", [])]
    r.meta.update({"model": model.name, "flags": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}})
    mlir = work / f"{name}.mlir"
    if "transform" in steps:
        r.run(["model_transform.py", "--model_name", name, "--model_def", str(model), *preprocess_flags(a),
               "--mlir", mlir.name], work, "transform.log")
        (a.out / "ops.json").write_text(json.dumps(op_list(mlir), indent=1))
    if "calibrate" in steps:
        r.run(["run_calibration.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num),
               "--tune_num", str(a.tune_num), "-o", "cali_table"], work, "calibration.log")
        shutil.copy(work / "cali_table", a.out / "cali_table")
        for m in a.cali_methods.split(","):  # the other methods of run_calibration (untuned: its run() tunes KL only)
            if m.strip():
                r.run(["run_calibration.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num), "--tune_num",
                       str(a.tune_num), "--cali_method", f"use_{m.strip()}", "-o", f"cali_table_{m.strip()}"], work,
                      f"calibration_{m.strip()}.log")
                shutil.copy(work / f"cali_table_{m.strip()}", a.out / f"cali_table_{m.strip()}")
    if "sensitive" in steps:
        sd = a.out / "sensitive"
        sw = work / "sensitive"
        sw.mkdir(exist_ok=True)
        for f in work.glob(f"{name}*"):
            if f.is_file() and (f.suffix in (".mlir", ".npz")):
                shutil.copy(f, sw / f.name)
        shutil.copy(a.out / "cali_table", sw / "cali_table")
        dt = r.run(["run_sensitive_layer.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num),
                    "--inference_num", str(a.inference_num), "--tune_num", str(a.tune_num), "--calibration_table",
                    "cali_table", "--chip", a.chip, "--max_float_layers", str(a.max_float_layers),
                    "--expected_cos", str(a.expected_cos), "-o", "qtable"], sw, "stdout.log")
        sd.mkdir(exist_ok=True)
        for f in sorted(sw.iterdir()):
            if f.name in ("qtable", "new_cali_table.txt") or f.name.startswith("cali_table_"):
                shutil.copy(f, sd / f.name)
        clean_log(sw / "SensitiveLayerSearcher", sd / "SensitiveLayerSearcher")
        stdout = "\n".join(l for l in (sw / "stdout.log").read_text(errors="replace").splitlines()
                           if "sensitive layer" in l or "outputs_cos" in l or "total time" in l)
        summ = parse_search((sd / "SensitiveLayerSearcher").read_text(), stdout)
        summ["wall_s"] = round(dt, 2)
        (sd / "summary.json").write_text(json.dumps(summ, indent=1))
    if "qtable" in steps:  # run_qtable.py: the greedy MixPrecSearcher, its samples = --inference_num
        qw = work / a.qtable_dir
        if qw.exists():
            shutil.rmtree(qw)
        qw.mkdir()
        for f in work.glob(f"{name}*"):
            if f.is_file() and (f.suffix in (".mlir", ".npz")):
                shutil.copy(f, qw / f.name)
        shutil.copy(a.out / "cali_table", qw / "cali_table")
        dt = r.run(["run_qtable.py", mlir.name, *data_flags(a), "--input_num", str(a.inference_num),
                    "--calibration_table", "cali_table", "--chip", a.chip, "--expected_cos", str(a.expected_cos),
                    "--min_layer_cos", str(a.min_layer_cos), "-o", "qtable"], qw, "stdout.log")
        qd = a.out / a.qtable_dir
        if qd.exists():
            shutil.rmtree(qd)
        qd.mkdir()
        for f in ("qtable", "full_loss_table.txt", "mix_prec_result", "tmp_mix_table.txt"):
            if (qw / f).is_file():
                shutil.copy(qw / f, qd / f)
        clean_log(qw / "MixPrecSearcher", qd / "MixPrecSearcher")
        # print() is sent to /dev/null during the search (disable_print), so stdout holds no 'full_op_list:':
        # rebuild it here with the searcher's own get_full_op_list on the same two lowerings
        from calibration.data_selector import DataSelector
        from calibration.mix_precision import MixPrecSearcher, MixQuantModel
        from utils.mlir_parser import MlirParser

        cwd = os.getcwd()
        os.chdir(qw)
        try:
            fm = MixQuantModel(mlir.name, a.chip)
            im = MixQuantModel(mlir.name, a.chip, "cali_table")
            full = MixPrecSearcher.get_full_op_list(None, fm, im, fm.parser.get_op_name_list(),
                                                    im.parser.get_op_name_list())
            full_ops = [{"name": k, "type": v.type} for k, v in full.items()]
            top_ops = MlirParser(mlir.name).get_op_name_list()
            fm.clean(), im.clean()
        finally:
            os.chdir(cwd)
        log = (qd / "MixPrecSearcher").read_text(errors="replace")
        dot = (qd / "mix_prec_result").read_text(errors="replace") if (qd / "mix_prec_result").exists() else ""
        summ = {"setting": a.qtable_setting, "expected_cos": a.expected_cos, "min_layer_cos": a.min_layer_cos,
                "input_num": a.inference_num, "max_fp_layers": len(top_ops) // 4, "n_top_ops": len(top_ops)}
        summ.update(parse_qtable_run(log, dot, [o["name"] for o in full_ops]))
        summ["fp_layers"] = [l.split()[0] for l in (qd / "qtable").read_text().splitlines()
                             if l.strip() and not l.startswith("#")] if (qd / "qtable").exists() else []
        summ["full_op_list"] = full_ops
        # tqdm's bar (stderr, into stdout.log) names each op of the loop as it starts it: the order it iterated
        seen = []
        for m in re.finditer(r"Processing (\S+?):", (qw / "stdout.log").read_text(errors="replace")):
            if not seen or seen[-1] != m[1]:
                seen.append(m[1])
        summ["iterated_ops_from_tqdm"] = seen
        summ["full_op_list_matches_tqdm"] = seen == [o["name"] for o in full_ops][: len(seen)]
        ds = DataSelector(a.dataset, a.inference_num, a.data_list)  # what run_qtable's _init_inputs selects
        summ["samples"] = [os.path.relpath(f, a.dataset) if a.dataset else f for f in ds.data_list]
        summ["samples_how"] = ("DataSelector(dataset, input_num, data_list).data_list replayed in the harness "
                               "(sorted glob, random.seed(1684), shuffle, first input_num)")
        summ["wall_s"] = round(dt, 2)
        tr = [c for c in r.meta["commands"] if c["cmd"].startswith("model_transform.py")]
        summ["commands"] = ([tr[-1]] if tr else []) + [r.meta["commands"][-1]]  # the model's transform, this run
        (qd / "summary.json").write_text(json.dumps(summ, indent=1))
    for kind in ("search_qtable", "search_threshold"):  # run_calibration --search (1.23 and 1.30.2 ship it)
        if kind not in steps:
            continue
        sw = work / kind
        sw.mkdir(exist_ok=True)
        for f in work.glob(f"{name}*"):
            if f.is_file() and (f.suffix in (".mlir", ".npz")):
                shutil.copy(f, sw / f.name)
        extra = ["--quantize_table", "qtable"]  # required by both (search_threshold writes none)
        if kind == "search_qtable":
            extra += ["--quantize_method_list", a.quantize_method_list, "--max_float_layers", str(a.max_float_layers)]
        dt = r.run(["run_calibration.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num),
                    "--inference_num", str(a.inference_num), "--tune_num", str(a.tune_num), "--search", kind,
                    "--chip", a.chip, "--expected_cos", str(a.expected_cos), *extra, "-o", "cali_table"], sw, "stdout.log")
        sd = a.out / kind
        sd.mkdir(exist_ok=True)
        for f in sorted(sw.iterdir()):
            if f.is_file() and (f.name in ("qtable", "Search_Qtable", "Search_Threshold") or f.name.startswith("cali_table")):
                shutil.copy(f, sd / f.name)
        (sd / "wall_s.json").write_text(json.dumps({"wall_s": round(dt, 2)}))
    if "dump" in steps:
        dump(a, r, name)
    if "deploy" in steps:  # the bmodel of cali_table on the BM1684 simulator (cmodel, CPU), the dumped samples
        import numpy as np

        bm = f"{name}_bm1684_int8.bmodel"
        r.run(["model_deploy.py", "--mlir", mlir.name, "--quantize", "INT8", "--calibration_table",
               str(a.out / "cali_table"), "--chip", a.chip, "--model", bm], work, "deploy.log")
        with np.load(a.out / "int8" / "inputs.npz") as z:
            inputs = {k: z[k] for k in z.files}
        outs: dict[str, list] = {}
        for i in range(len(next(iter(inputs.values())))):
            np.savez(work / "bm_in.npz", **{k: v[i : i + 1] for k, v in inputs.items()})
            r.run(["model_runner.py", "--model", bm, "--input", "bm_in.npz", "--output", "bm_out.npz"], work,
                  "bmodel_run.log")
            with np.load(work / "bm_out.npz") as z:
                for k in z.files:
                    outs.setdefault(k, []).append(z[k])
        (a.out / "bmodel").mkdir(exist_ok=True)
        np.savez_compressed(a.out / "bmodel" / "outputs.npz", **{k: np.concatenate(v) for k, v in outs.items()})
    meta_path.write_text(json.dumps(r.meta, indent=1))
    print(f"run.py: {', '.join(steps)} done -> {a.out}")


if __name__ == "__main__":
    main()
