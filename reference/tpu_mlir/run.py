#!/usr/bin/env python3
"""Run the real TPU-MLIR on one model and collect everything qsens is compared with.

    python reference/tpu_mlir/run.py MODEL.onnx --dataset DIR --out OUT [TPU-MLIR flags]

Runs, in the harness venv built by ``setup.sh`` (any Python can start this script; it re-runs itself
under the harness interpreter):

1. ``model_transform.py``  -> ``ops.json`` (the Top-dialect op list: name, type, operands, in order)
2. ``run_calibration.py``   -> ``cali_table`` (default method: KL + SimpleTuner) and ``cali_table_<m>`` for
   ``--cali_methods`` (default max, percentile9999, mse)
3. ``run_sensitive_layer.py`` (``--steps sensitive``) -> ``sensitive/`` (``--sensitive_dir``; ``--sensitive_args`` adds flags): qtable, new_cali_table.txt, the
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
5. ``--steps dump``: lowers the Top MLIR to the ``--chip`` INT8 TPU dialect with ``cali_table`` (the same
   ``tpuc-opt`` pipeline the searches use), preprocesses the first ``--dump_num`` samples of TPU-MLIR's
   own data selection with TPU-MLIR's preprocessing, runs its interpreter (``pymlir``) on the INT8 model
   with fixed-point outputs and on the F32 Top model, and writes ``int8/`` (``int8_<chip>/`` for another
   ``--chip``, e.g. ``int8_bm1684x/``): ``inputs.npz`` (the
   preprocessed samples), ``qinfo.json`` (per tensor: storage type, scale, zero point), ``int8.npz``
   (integer codes of every quantized tensor, float values of tensors the INT8 model keeps in F32) and
   ``f32.npz`` (float outputs).
6. ``--steps deploy`` (after ``dump``): ``model_deploy.py`` to a BM1684 bmodel of ``cali_table`` and
   ``model_runner.py`` on it (the chip simulator, CPU) for the dumped samples -> ``bmodel/outputs.npz``.
7. ``--steps search_qtable`` / ``search_threshold``: ``run_calibration.py --search ...`` (the newer searchers; use
   ``--version 1.30.2`` for the newest release), each in a fresh ``work/<dir>`` (an existing ``cali_table`` there
   would make 1.30.2 skip its calibration) -> ``OUT/<dir>`` (default ``search_qtable`` / ``search_threshold``;
   ``--search_dir``) with the tables it writes (``cali_table``, ``cali_table_<m>.1`` / ``_tune``,
   ``new_cali_table.txt``), ``qtable``, ``tmp_mix_table.txt``, its log (``Search_Qtable`` / ``Search_Threshold``,
   banners dropped) and ``summary.json``: the command, wall time, every parsed log value (type screening,
   per-layer trials and best thresholds, the ranking, each mix-model evaluation incl. adjust_qtable's probes, the
   final lines; search_threshold: the scores and the chosen method), the qtable's layers, the op lists the
   searcher does not log rebuilt with its own functions (fixed float ops, non-float and searched layers) and the
   samples. ``--search_mode fast_search`` runs ``--search fast_search``; ``--search_args`` adds flags (use
   ``--search_args=--cluster``); ``--search_collect_only`` rebuilds ``OUT/<dir>`` from an earlier run.
   ``docs/search_qtable.md`` specifies what 1.30.2 computes.

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


SEARCH_LOGS = {"search_qtable": "Search_Qtable", "fast_search": "Search_Qtable", "search_threshold": "Search_Threshold"}
INT_DTYPES = ("I8", "U8", "F8E4", "U16", "I16", "I32", "U32")  # get_fixed_float_layers' integer storage types


def _log_msgs(log: str) -> list[str]:
    """The messages of a ``logger`` file (``INFO:root:`` / ``WARNING:root:`` prefixes dropped), in order."""
    out = []
    for line in log.splitlines():
        m = re.match(r"(INFO|WARNING|DEBUG|ERROR):root:(.*)", line)
        if m:
            out.append(m[2])
    return out


def _float(x: str):
    try:
        return float(x)
    except ValueError:
        return x


def parse_search_qtable_log(log: str) -> dict:
    """What ``SearchQtable.run`` / ``SearchQtableFast.run`` (TPU-MLIR 1.30.2 calibration/search_qtable.py) logged,
    in order: type screening, per-layer trials and best thresholds, the ranking, every mix-model evaluation
    (``float layer number: N, mix model outputs_cos: C``: step 6, then the adjust_qtable probes, then the
    6-decimal one of print_log_info), the final result."""
    import ast

    msgs = _log_msgs(log)
    s: dict = {"warnings": [l.split(":", 2)[2] for l in log.splitlines() if l.startswith("WARNING:root:")]}
    s["job_success_early"] = None
    s["type_screen"], s["layers"], s["ranking"], s["partners"], s["set_fp_layer_lists"] = [], [], [], [], []
    s["evaluations"], s["fast_trials"] = [], []
    s["n_int8_runs"] = sum(1 for l in msgs if l.startswith("run int8 mode:"))
    s["n_float_runs"] = sum(1 for l in msgs if l.startswith("run float mode:"))
    cur = None
    after_result = False
    for l in msgs:
        if m := re.fullmatch(r"quantize_method_list=(\[.*\])", l):
            s["quantize_method_list"] = ast.literal_eval(m[1])
        elif m := re.fullmatch(r"all_int8_cos=(\S+) with default mse_tune calitable", l):
            s["all_int8_cos"] = float(m[1])
        elif m := re.match(r"job success, current int8 cos:(\S+) is higher than expected_cos:([^,]+),?(.*)", l):
            s["job_success_early"] = {"int8_cos": float(m[1]), "expected_cos": float(m[2]), "message": l}
        elif m := re.fullmatch(r"all layer number: (\d+)", l):
            s["n_all_layers"] = int(m[1])
        elif m := re.fullmatch(r"all layer number no float: (\d+)", l):
            s["n_layers_no_float"] = int(m[1])
        elif m := re.fullmatch(r"op_type : (\S+), similarity : (\S+)", l):
            s["type_screen"].append([m[1], float(m[2])])
        elif m := re.fullmatch(r"sensitive_op_type : (\[.*\]), please pay attention to these types of operations", l):
            s["sensitive_op_type"] = ast.literal_eval(m[1])
        elif m := re.fullmatch(r"all search layer number: (\d+)", l):
            s["n_search_layers"] = int(m[1])
        elif m := re.fullmatch(r"Global metrics layer is : (.*)", l):
            s["global_compare_layers"] = m[1]
        elif m := re.fullmatch(r"start to handle layer: (\S+), type: (\S+)", l):
            cur = {"name": m[1], "type": m[2], "trials": []}
            s["layers"].append(cur)
        elif m := re.fullmatch(r"adjust layer (\S+) th, with method (\S+), and threshlod (\S+)", l):
            cur["trials"].append({"method": m[2], "th": float(m[3])})
        elif m := re.fullmatch(r"outputs_cos_los = (\S+)", l):
            cur["trials"][-1]["loss"] = float(m[1])
        elif m := re.fullmatch(r"layer (\S+), layer type is (\S+), best_th = (\S+), best_method = (\S+), best_cos_loss = (\S+)", l):
            cur.update({"best_th": float(m[3]), "best_method": m[4], "best_loss": float(m[5])})
        elif m := re.fullmatch(r"layer (\S+), outputs_cos:(\S+), outputs_snr:(\S+)", l):  # fast_search (and 4-bit)
            s["fast_trials"].append([m[1], _float(m[2]), _float(m[3])])
        elif m := re.fullmatch(r"total time of sensitive_layer search is: (\S+)", l):
            s["sensitive_search_s"] = float(m[1])
        elif m := re.fullmatch(r"the layer (\S+) is (\d+) sensitive layer, loss is (\S+), type is (\S+)", l):
            s["ranking"].append([m[1], int(m[2]), float(m[3]), m[4]])
        elif m := re.fullmatch(r"(next scale op|pre conv op): (\S+)", l):
            s["partners"].append([m[1], m[2]])
        elif m := re.fullmatch(r"set_fp_layer_list = (\[.*\])", l):
            s["set_fp_layer_lists"].append(ast.literal_eval(m[1]))
        elif m := re.fullmatch(r"selected_layers = (\[.*\])", l):  # --cluster: the KMeans cluster of larger cos loss
            s["cluster_selected_layers"] = ast.literal_eval(m[1])
        elif l == ">>>run result:":
            after_result = True
        elif m := re.fullmatch(r"float layer number: (\d+), mix model outputs_cos: (\S+)", l):
            if after_result:
                s["final_float_layer_number"], s["final_mix_outputs_cos"] = int(m[1]), float(m[2])
            else:
                s["evaluations"].append([int(m[1]), float(m[2])])
        elif m := re.fullmatch(r"int8 outputs_cos:(\S+) old", l):
            s["int8_outputs_cos_old"] = float(m[1])
        elif m := re.fullmatch(r"mix model outputs_cos:(\S+)", l):
            s["mix_outputs_cos"] = float(m[1])
        elif m := re.fullmatch(r"Output mix quantization table to (\S+)", l):
            s["quantize_table"] = m[1]
        elif m := re.fullmatch(r"total time:(\S+)", l):
            s["total_time"] = float(m[1])
    # the evaluations: [0] = step 6 (top-K of --max_float_layers), then adjust_qtable's N//5 and bisection probes
    s["adjust_qtable_probes"] = s["evaluations"][1:]
    return s


def parse_fast_rounds(log: str, stdout: str) -> list[dict]:
    """fast_search: the per-layer (cos loss, snr) of each round. A round ends with the evaluation of the model
    with the float layers so far (a ``run int8 mode`` line not preceded by ``start to handle layer``); that
    round cos is only shown (4 decimals) in tqdm's ``fast_search`` bar."""
    rounds, cur, pending = [], [], False
    for l in _log_msgs(log):
        if l.startswith("start to handle layer:"):
            pending = True
        elif l.startswith("run int8 mode:"):
            if not pending and cur:
                rounds.append({"trials": cur})
                cur = []
            pending = False
        elif m := re.fullmatch(r"layer (\S+), outputs_cos:(\S+), outputs_snr:(\S+)", l):
            cur.append([m[1], _float(m[2]), _float(m[3])])
    if cur:
        rounds.append({"trials": cur})
    cos: dict[int, float] = {}  # the bar after round n is redrawn: keep its last value (set after update(1))
    for m in re.finditer(r"fast_search: (\d+)/\d+ rounds \| cos=,? ?([0-9.]+)", stdout.replace("\r", "\n")):
        if int(m[1]) >= 1:
            cos[int(m[1])] = float(m[2])
    for n, c in cos.items():
        if n - 1 < len(rounds):
            rounds[n - 1]["outputs_cos_4dp"] = c
    return rounds


def parse_search_threshold_log(log: str) -> dict:
    """What ``SearchThreshold.run_search_calitable`` (1.30.2 calibration/search_threshold.py) logged."""
    import ast

    s: dict = {"tried": [], "warnings": [l.split(":", 2)[2] for l in log.splitlines() if l.startswith("WARNING:root:")]}
    for l in _log_msgs(log):
        if m := re.fullmatch(r"Quantization threshold calculation method: (\[.*\])", l):
            s["methods"] = ast.literal_eval(m[1])
        elif m := re.fullmatch(r"Trying multi algorithm threshold of (\S+) with (\S+) in \[.*\]", l):
            s["tried"].append([m[1], m[2]])
        elif m := re.fullmatch(r"(cos|snr) similarity scores: (\{.*\})", l):
            s["benchmark_method"], s["scores"] = m[1], ast.literal_eval(m[2])
        elif m := re.fullmatch(r"optimal_method_name: (\S+), optimal_value: (\S+)", l):
            s["optimal_method"], s["optimal_value"] = m[1], float(m[2])
        elif l == "success":
            s["success"] = True
    return s


def _qtable_layers(path: Path) -> dict:
    """A 1.30.2 QuantizeTable dump split by its ``# pattern/shape/custom layers`` sections."""
    sec, out = None, {"pattern": [], "shape": [], "custom": []}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"# (pattern|shape|custom) layers", line.strip())
        if m:
            sec = m[1]
        elif line.strip() and not line.startswith("#") and sec:
            out[sec].append(line.split()[:2])
    return out


def search_lists(sw: Path, mlir_name: str, chip: str, sensitive_types: list[str] | None) -> dict:
    """Rebuild, with the searcher's own functions on the same lowering, the op lists SearchQtable.run does not
    log: ``float_ops`` (get_fixed_float_layers on the all-INT8 model of the initial qtable), the non-float layers
    and the searched layers (their types among ``sensitive_op_type``)."""
    from calibration.mix_precision import MixQuantModel
    from calibration.utils import get_mix_prec, get_no_fused_tensors
    from utils.mlir_parser import MlirParser

    cwd = os.getcwd()
    os.chdir(sw)
    try:
        q = _qtable_layers(Path("qtable"))
        init = [l for l, _ in q["pattern"] + q["shape"]]  # the initial (pattern/shape) float layers
        mix = Path("collect_mix_table.txt")
        mix.write_text("".join(f"{l} {m}\n" for l, m in q["pattern"] + q["shape"]))
        low, high = get_mix_prec(chip, "wi8ai8_fp", "auto")
        m = MixQuantModel(mlir_name, chip, low, high, "cali_table", str(mix))
        float_ops = [t for t in m.module.all_tensor_names if m.module.get_tensor_qinfo(t).dtype not in INT_DTYPES]
        m.clean()
        mix.unlink()
        p = MlirParser(mlir_name)
        all_ops = get_no_fused_tensors(p, p.get_op_name_list())
        quant = [l for l in all_ops if l not in float_ops]
        out = {"initial_float_layers": init, "float_ops": [t for t in float_ops if t in all_ops],
               "float_tensors_not_top_ops": [t for t in float_ops if t not in all_ops],
               "all_op_names": [[l, p.get_op_type_by_op_name(l)] for l in all_ops],
               "layer_names_quant": quant}
        if sensitive_types is not None:
            out["search_layers"] = [l for l in quant if p.get_op_type_by_op_name(l) in sensitive_types]
        return out
    finally:
        os.chdir(cwd)


def search_step(a, r: Runner, name: str, kind: str, work: Path, mlir: Path) -> None:
    """``run_calibration.py --search`` in a fresh ``work/<dir>`` (a ``cali_table`` left there from an earlier run
    would be reused: 1.30.2 then skips its calibration), its outputs and ``summary.json`` in ``OUT/<dir>``."""
    import shlex

    mode = a.search_mode if kind == "search_qtable" else kind
    dname = a.search_dir or (kind if mode == kind else f"search_qtable_{mode}")
    sw, sd = work / dname, a.out / dname
    logname = SEARCH_LOGS[mode]
    extra_user = shlex.split(a.search_args)
    cmd = ["run_calibration.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num), "--inference_num",
           str(a.inference_num), "--tune_num", str(a.tune_num), "--search", mode, "--chip", a.chip,
           "--expected_cos", str(a.expected_cos), "--quantize_table", "qtable"]  # required by both
    if kind == "search_qtable":
        cmd += ["--quantize_method_list", a.quantize_method_list, "--max_float_layers", str(a.max_float_layers)]
    cmd += [*extra_user, "-o", "cali_table"]
    if a.search_collect_only:
        prev = [c for c in r.meta["commands"] if c["cmd"].startswith("run_calibration.py") and f"--search {mode}" in c["cmd"]
                and c["cwd"].endswith(dname)]
        if not prev:
            sys.exit(f"run.py: no earlier {mode} command in meta.json to collect")
        dt, cmdline = prev[-1]["wall_s"], prev[-1]["cmd"]
    else:
        if sw.exists():
            shutil.rmtree(sw)
        sw.mkdir()
        for f in work.glob(f"{name}*"):
            if f.is_file() and (f.suffix in (".mlir", ".npz")):
                shutil.copy(f, sw / f.name)
        dt = r.run(cmd, sw, "stdout.log")
        cmdline = r.meta["commands"][-1]["cmd"]
    if sd.exists():
        shutil.rmtree(sd)
    sd.mkdir()
    for f in sorted(sw.iterdir()):
        if f.is_file() and (f.name in ("qtable", "new_cali_table.txt", "tmp_mix_table.txt") or f.name.startswith("cali_table")):
            shutil.copy(f, sd / f.name)
    if (sw / logname).exists():
        clean_log(sw / logname, sd / logname)
    log = (sd / logname).read_text(errors="replace") if (sd / logname).exists() else ""
    stdout = (sw / "stdout.log").read_text(errors="replace")
    summ: dict = {"setting": a.search_setting, "mode": mode, "command": cmdline, "wall_s": round(dt, 2),
                  "expected_cos": a.expected_cos, "input_num": a.input_num, "inference_num": a.inference_num,
                  "tune_num": a.tune_num, "extra_args": extra_user}
    if kind == "search_qtable":
        summ.update({"max_float_layers": a.max_float_layers, "quantize_method_list_arg": a.quantize_method_list})
        p = parse_search_qtable_log(log)
        summ.update(p)
        q = _qtable_layers(sd / "qtable")
        summ["qtable_layers"] = q
        summ["fp_layers"] = [l for l, _ in q["custom"]]
        summ["success_printed"] = "success search qtable" in stdout
        if mode == "fast_search":
            summ["fast_rounds"] = parse_fast_rounds(log, stdout)
        if p.get("n_layers_no_float") is not None or mode == "fast_search":
            lists = search_lists(sw, mlir.name, a.chip, p.get("sensitive_op_type"))
            summ.update(lists)
            if mode == "search_qtable":
                handled = [d["name"] for d in p["layers"]]
                summ["check"] = {"n_layers_no_float": len(lists["layer_names_quant"]) == p["n_layers_no_float"],
                                 "search_layers": lists.get("search_layers") == handled if "n_search_layers" in p else None}
    else:
        summ.update(parse_search_threshold_log(log))
    from calibration.data_selector import DataSelector

    rel = (lambda f: os.path.relpath(f, a.dataset)) if a.dataset else (lambda f: f)
    summ["calibration_samples"] = [rel(f) for f in DataSelector(a.dataset, a.input_num, a.data_list).data_list]
    summ["inference_samples"] = [rel(f) for f in DataSelector(a.dataset, a.inference_num, a.data_list).data_list]
    summ["samples_how"] = ("DataSelector(dataset, n, data_list).data_list replayed in the harness (sorted glob, "
                           "random.seed(1684), shuffle, first n): n = --input_num for the calibration, --inference_num "
                           "for the searcher's MixPrecSearcher; the tuner uses the first --tune_num calibration samples")
    tr = [c for c in r.meta["commands"] if c["cmd"].startswith("model_transform.py")]
    summ["transform_command"] = tr[-1]["cmd"] if tr else None
    (sd / "summary.json").write_text(json.dumps(summ, indent=1))


def int8_dir(chip: str, mode: str = "INT8") -> str:
    """The dump step's folder: ``int8`` for BM1684 (the fixtures' original layout), ``int8_<chip>`` otherwise;
    ``<mode>_<chip>`` (e.g. ``f16_bm1684x``) for a float ``--dump_mode``."""
    if mode.upper() != "INT8":
        return f"{mode.lower()}_{chip}"
    return "int8" if chip == "bm1684" else f"int8_{chip}"


def dump(a, r: Runner, name: str) -> None:
    import numpy as np
    import pymlir
    from calibration.data_selector import DataSelector
    from utils.mlir_parser import MlirParser
    from utils.mlir_shell import mlir_lowering
    from utils.preprocess import preprocess

    work = a.out / "work"
    mode = a.dump_mode.upper()
    d = a.out / (a.dump_dir or int8_dir(a.chip, "INT8" if a.dump_qtable else mode))
    d.mkdir(exist_ok=True)
    table = a.out / "cali_table"
    lowered = work / f"{name}_{a.chip}_{d.name}.mlir"
    t0 = time.time()
    os.chdir(work)  # the lowered MLIR names its weight file relative to the working directory
    if a.dump_qtable:  # a mixed model: INT8 with the qtable's layers in their float type (MixQuantModel's lowering)
        qt = os.path.abspath(a.dump_qtable)
        shutil.copy(qt, d / "qtable")
        mlir_lowering(f"{name}.mlir", lowered.name, "INT8", a.chip, cali_table=str(table), quantize_table=qt)
        cmd = f"mlir_lowering {name}.mlir INT8 {a.chip} cali_table quantize_table={Path(qt).name}"
    elif mode == "INT8":
        mlir_lowering(f"{name}.mlir", lowered.name, "INT8", a.chip, cali_table=str(table), asymmetric=a.asymmetric)
        cmd = f"mlir_lowering {name}.mlir INT8 {a.chip} cali_table" + (" asymmetric" if a.asymmetric else "")
    else:  # the float model of a mixed model's float layers (FLOAT_MAP: F16 on BM1684X)
        mlir_lowering(f"{name}.mlir", lowered.name, mode, a.chip)
        cmd = f"mlir_lowering {name}.mlir {mode} {a.chip}"
    r.meta["commands"].append({"cmd": cmd, "wall_s": round(time.time() - t0, 2)})
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
    tensors = "int8.npz" if mode == "INT8" or a.dump_qtable else ("tpu_f32.npz" if mode == "F32" else f"{mode.lower()}.npz")
    np.savez_compressed(d / tensors, **codes)  # (f32.npz below: the Top model's outputs)
    mf, resf = run_model(work / f"{name}.mlir", False)
    outs = {k: np.stack([x[k] for x in resf]).astype(np.float32) for k in mf.output_names}
    np.savez_compressed(d / "f32.npz", **outs)
    r.meta["dump_files"] = [os.path.relpath(f, a.dataset) if a.dataset else f for f in files]
    shutil.copy(lowered, d / (d.name.split('_')[0] + '_tpu.mlir.txt')) if a.keep_mlir else None


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
    ap.add_argument("--dump_mode", default="INT8", help="the dump step's model: INT8 (with cali_table) or a float "
                    "mode (F16, BF16, F32) as TPU-MLIR lowers it for --chip -> OUT/<mode>_<chip>/<mode>.npz")
    ap.add_argument("--dump_qtable", default="", help="dump the mixed model: INT8 with this qtable's float layers")
    ap.add_argument("--asymmetric", action="store_true", help="the dump step's INT8 model asymmetric (zero points)")
    ap.add_argument("--dump_dir", default="", help="the dump step's folder in OUT (default from --chip/--dump_mode)")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--keep_mlir", action="store_true")
    ap.add_argument("--quantize_method_list", default="MSE", help="search_qtable's methods (TPU-MLIR default MSE)")
    ap.add_argument("--search_mode", default="search_qtable", choices=["search_qtable", "fast_search"],
                    help="the search_qtable step's --search value (fast_search: SearchQtableFast)")
    ap.add_argument("--search_dir", default="", help="the search step's folder in OUT and OUT/work (default: the step, "
                    "search_qtable_fast_search for --search_mode fast_search)")
    ap.add_argument("--search_args", default="", help="more run_calibration flags for the search step, e.g. '--cluster'")
    ap.add_argument("--search_setting", default="", help="why this setting, kept in the search step's summary.json")
    ap.add_argument("--search_collect_only", action="store_true",
                    help="rebuild OUT/<dir> and its summary.json from an earlier run's work folder (no run)")
    ap.add_argument("--sensitive_dir", default="sensitive", help="the sensitive step's folder in OUT and OUT/work")
    ap.add_argument("--sensitive_args", default="", help="more run_sensitive_layer flags, e.g. '--debug_cmd tune_steps=5'")
    ap.add_argument("--cali_args", default="", help="more run_calibration flags for the calibrate step, e.g. "
                    "'--we --bc' (the accuracy aids; the Top weights before/after go to OUT/top_weights_*.npz)")
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
    # the model bytes this record was made from, and the CPU: zoo models are exported on each machine, and a few-ulp
    # difference in their weights moves codes at exact rounding ties (README, "Checked against TPU-MLIR", (4))
    import hashlib
    import platform

    steps_run = r.meta.setdefault("model_sha256_by_step", {})
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    for st in steps:
        steps_run[st] = {"sha256": sha, "cpu": cpu}
    mlir = work / f"{name}.mlir"
    if "transform" in steps:
        r.run(["model_transform.py", "--model_name", name, "--model_def", str(model), *preprocess_flags(a),
               "--mlir", mlir.name], work, "transform.log")
        (a.out / "ops.json").write_text(json.dumps(op_list(mlir), indent=1))
    if "calibrate" in steps:
        wfile = work / f"{name}_top_f32_all_weight.npz"
        if a.cali_args and wfile.exists():  # --we/--bc/--sq rewrite the Top weights in place: keep both versions
            shutil.copy(wfile, a.out / "top_weights_before.npz")
        r.run(["run_calibration.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num),
               "--tune_num", str(a.tune_num), *a.cali_args.split(), "-o", "cali_table"], work, "calibration.log")
        shutil.copy(work / "cali_table", a.out / "cali_table")
        if a.cali_args and wfile.exists():
            shutil.copy(wfile, a.out / "top_weights_after.npz")
        for m in a.cali_methods.split(","):  # the other methods of run_calibration (untuned: its run() tunes KL only)
            if m.strip():
                r.run(["run_calibration.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num), "--tune_num",
                       str(a.tune_num), "--cali_method", f"use_{m.strip()}", "-o", f"cali_table_{m.strip()}"], work,
                      f"calibration_{m.strip()}.log")
                shutil.copy(work / f"cali_table_{m.strip()}", a.out / f"cali_table_{m.strip()}")
    if "sensitive" in steps:
        sd = a.out / a.sensitive_dir
        sw = work / a.sensitive_dir
        sw.mkdir(exist_ok=True)
        for f in work.glob(f"{name}*"):
            if f.is_file() and (f.suffix in (".mlir", ".npz")):
                shutil.copy(f, sw / f.name)
        shutil.copy(a.out / "cali_table", sw / "cali_table")
        dt = r.run(["run_sensitive_layer.py", mlir.name, *data_flags(a), "--input_num", str(a.input_num),
                    "--inference_num", str(a.inference_num), "--tune_num", str(a.tune_num), "--calibration_table",
                    "cali_table", "--chip", a.chip, "--max_float_layers", str(a.max_float_layers),
                    "--expected_cos", str(a.expected_cos), *a.sensitive_args.split(), "-o", "qtable"], sw, "stdout.log")
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
        if kind in steps:
            search_step(a, r, name, kind, work, mlir)
    if "dump" in steps:
        dump(a, r, name)
    if "deploy" in steps:  # the bmodel of cali_table on the BM1684 simulator (cmodel, CPU), the dumped samples
        import numpy as np

        bm = f"{name}_{a.chip}_int8.bmodel"
        r.run(["model_deploy.py", "--mlir", mlir.name, "--quantize", "INT8", "--calibration_table",
               str(a.out / "cali_table"), "--chip", a.chip, "--model", bm], work, "deploy.log")
        with np.load(a.out / int8_dir(a.chip) / "inputs.npz") as z:
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
