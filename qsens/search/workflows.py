"""Complete jobs from files: what ``qsens search`` (and ``qsens qtable``) run, callable from Python.

:class:`SearchOptions` carries TPU-MLIR's flags (the CLI's defaults); :func:`run_sensitive_search` selects the
samples, converts the model, calibrates (or reads ``--calibration_table``), runs :func:`qsens.search.job.search`
and prints TPU-MLIR's result lines.  The CLI only parses strings into options, so the CLI and the README's
API example run the same function.

Phases are checkpointed: the finished calibration is kept in ``<out_dir>/calibration.ckpt.json`` (with the
fingerprint of the model file, samples, preprocessing and calibration flags), so ``resume=True`` after a
kill reuses it instead of calibrating again, then the search resumes from its own checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import devices
from ..errors import SearchError
from . import memory

CAL_CKPT = "calibration.ckpt.json"


@dataclasses.dataclass
class DataOptions:
    """The model and its data: TPU-MLIR's model_transform / dataset flags, shared by every verb's options."""

    model: str
    dataset: str | None = None
    data_list: str | None = None
    input_shapes: Any = None
    name_style: str = "tpu_mlir"
    names_map: str | None = None  # JSON of qsens name -> the user's TPU-MLIR name (qsens names --write-map)
    seed: int = 1684
    preset: str | None = None
    resize_dims: Any = None
    keep_aspect_ratio: bool | None = None
    keep_ratio_mode: str | None = None
    pad_type: str | None = None
    pad_value: int | None = None
    pixel_format: str | None = None
    channel_format: str | None = None
    mean: Any = None
    scale: Any = None
    labels: str | None = None  # labels file for the labelled top-1/top-5 line (qsens.data.labels)
    # TPU-MLIR run_calibration's accuracy aids, applied first (qsens.search.aidflow; docs/accuracy_aids.md)
    we: bool = False
    bc: bool = False
    sq: bool = False
    we_relu6: str = "tpu_mlir"
    bc_inference_num: int = 30
    min_layer_cos: float = 0.99  # --bc's bound (run_qtable's own flag in QtableOptions)
    save_model: str | None = None

    @classmethod
    def from_namespace(cls, ns):
        return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)})


@dataclasses.dataclass
class SearchOptions(DataOptions):
    """TPU-MLIR ``run_sensitive_layer.py`` flags (names and defaults as in ``qsens search --help``)."""

    input_num: int = 10
    inference_num: int = 10
    max_float_layers: int = 5
    expected_cos: float = 0.99
    post_process: str | None = None
    global_compare_layers: str | None = None
    calibration_table: str | None = None
    chip: str = "bm1684"
    quantize_table: str = "qtable"
    methods: str = "max,percentile9999,kl"
    tune_num: int = 5
    hist: str = "v1"
    out_dir: str = "."
    resume: bool = False
    strategy: str = "fast"
    batch: int | None = None  # --batch: calibration 10; the search: memory.search_chunk
    method_batch: str = "loop"
    quiet: bool = False
    variant: str = "sensitive"  # sensitive (TPU-MLIR's) or one of qsens.search.variants.VARIANTS
    unit_len: int = 2
    top_k: int = 10
    grid_size: int = 16
    optax_steps: int = 50
    optax_lr: float = 0.02
    float_budget_macs: float = 0.1
    score: str = "taylor"
    histogram_bin_num: Any = 2048  # run_sensitive_layer's --histogram_bin_num (qsens.calib.flags)
    tune_list: str | None = None  # samples for the SimpleTuner (--tune_list)
    fp_type: str = "auto"  # float type of the float layers (auto = F32 on BM1684)
    debug_cmd: str = ""  # run_sensitive_layer's --debug_cmd (tune_steps=N; logging keys; qsens.calib.flags)



# ------------------------------------------------------------------------------------------------ helpers
def load_post_process(path: str | None):
    """``PostProcess(outputs)`` from a user's .py file (TPU-MLIR's ``--post_process``)."""
    if not path:
        return None
    import importlib.util

    if not os.path.isfile(path):
        raise SearchError(f"--post_process file '{path}' does not exist; pass a .py file that defines PostProcess(outputs)")
    spec = importlib.util.spec_from_file_location("qsens_user_post_process", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001
        raise SearchError(f"--post_process file '{path}' failed to import ({type(e).__name__}: {e})") from None
    fn = getattr(mod, "PostProcess", None)
    if not callable(fn):
        raise SearchError(f"--post_process file '{path}' defines no PostProcess(outputs) function")
    return fn


def parse_compare_layers(s: str | None):
    """``'a,b'`` or ``'a:0.3,b:0.7'`` -> (names, weights or None); weights must all be given and sum to 1."""
    if not s:
        return None, None
    names, weights = [], []
    for part in s.split(","):
        name, _, w = part.strip().partition(":")
        names.append(name.strip())
        weights.append(float(w) if w else None)
    if all(w is None for w in weights):
        return tuple(names), None
    if any(w is None for w in weights) or abs(sum(weights) - 1.0) > 1e-9:
        raise SearchError(f"--global_compare_layers weights must all be given and sum to 1, got {s!r}")
    return tuple(names), tuple(weights)


def ensure_out_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".qsens-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as e:
        raise SearchError(f"--out_dir '{path}' is not writable ({e.strerror}); choose another directory") from None
    return path


def sample_labels(files: list[str], o: DataOptions) -> list | None:
    """The samples' ImageNet labels: ``--labels``, validation names, synset folders, then the zoo's manifest."""
    from ..data.labels import resolve_labels
    from ..zoo import labels_if_known

    return resolve_labels(files, o.labels, fallback=labels_if_known)


def labelled_accuracy(problem, fp_list, labels, th=None) -> dict | None:
    """Top-1 / top-5 on the labelled images of FP32 (``"fp32"``), all-INT8 (``"int8"``) and the qtable's model
    (``"mix"``: ``fp_list`` float, thresholds ``th``, default the table's), each a
    :func:`~qsens.search.job.label_accuracy` dict; ``None`` without labels or when the first output is not
    (images, classes) logits."""
    import numpy as np

    from .evaluators import Config, mixed_similarity
    from .job import label_accuracy

    ref = problem.ref_outputs[next(iter(problem.ref_outputs))]
    if labels is None or ref.ndim != 2 or ref.shape[1] < 2:
        return None
    ops = frozenset(op.name for op in problem.ops)
    int8 = mixed_similarity(problem, Config(ops, problem.th0))[2]
    th = problem.th0 if th is None else np.asarray(th, np.float32)
    mix = mixed_similarity(problem, Config(ops - set(fp_list), th))[2]
    return {k: label_accuracy(o, labels) for k, o in (("fp32", ref), ("int8", int8), ("mix", mix))}


def echo_labelled(lab: dict | None, echo: Callable[[str], None]) -> None:
    """A summary's ``labelled`` accuracies as one line (nothing when the images have no labels)."""
    if not lab:
        return
    names = {"fp32": "FP32", "int8": "INT8", "mix_new_table": "MIX new table", "mix": "MIX"}
    echo(f"  labelled images ({lab['fp32']['n']}): top-1 / top-5 "
         + ", ".join(f"{name} {lab[k]['top1']:.3f} / {lab[k]['top5']:.3f}" for k, name in names.items() if k in lab))


def file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(o):
    from ..onnx import to_jax
    from ..onnx.mlir_names import read_names_map

    names_map = read_names_map(getattr(o, "names_map", None), o.name_style)  # qsens names --write-map
    return to_jax(o.model, o.input_shapes, name_style=o.name_style, names_map=names_map)


def preprocess_for(o, graph):
    from ..pipeline import make_preprocess, preset_for_model

    preset = o.preset if o.preset is not None else preset_for_model(o.model)
    return make_preprocess(graph, preset=preset, resize_dims=o.resize_dims, keep_aspect_ratio=o.keep_aspect_ratio,
                           pixel_format=o.pixel_format, channel_format=o.channel_format, mean=o.mean, scale=o.scale,
                           keep_ratio_mode=o.keep_ratio_mode, pad_type=o.pad_type, pad_value=o.pad_value)


class PhaseCheckpoint:
    """A finished phase's results kept as JSON in the out dir, valid only for the same fingerprint."""

    def __init__(self, path: str, key: dict):
        self.path = path
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load(self) -> dict | None:
        try:
            with open(self.path) as f:
                d = json.load(f)
        except (OSError, ValueError):
            return None
        return d if d.get("key") == self.key else None

    def save(self, data: dict) -> None:
        from .job import atomic_write

        atomic_write(self.path, json.dumps({"key": self.key, **data}))

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


# ------------------------------------------------------------------------------------------------ the job
def run_sensitive_search(o: SearchOptions, *, echo: Callable[[str], None] = print):
    """``qsens search``: returns the :class:`~qsens.search.job.SearchResult`."""
    from ..calibrate import PASS1_KEEP_BYTES, SENSITIVE_NAMES, Calibration, calibrate_multi, write_tables
    from ..data.dataset import select_files
    from ..engine import DEFAULT_CHUNK, CompileStats, enable_compilation_cache
    from ..pipeline import load_inputs
    from ..tables import CaliTable, cali_header_lines, check_table_matches, read_cali_table
    from .aidflow import with_aids
    from .job import SearchConfig, search

    t0 = time.time()
    enable_compilation_cache()
    out_dir = ensure_out_dir(o.out_dir)
    o = with_aids(o, out_dir=out_dir, input_table=o.calibration_table, echo=echo)
    requested_chunk = o.batch  # None: the search's chunk is the planner's (memory.search_chunk)
    o = dataclasses.replace(o, batch=o.batch or DEFAULT_CHUNK)  # the calibration's batch (and the variants')
    qpath = o.quantize_table if os.path.isabs(o.quantize_table) else os.path.join(out_dir, o.quantize_table)
    ensure_out_dir(os.path.dirname(os.path.abspath(qpath)))
    post = load_post_process(o.post_process)
    compare, cweights = parse_compare_layers(o.global_compare_layers)
    from ..calib.flags import DEFAULT_TUNE_STEPS, calibration_flags, resolve_fp_type
    from ..quant.chip import with_fp_type

    resolve_fp_type(o.chip, o.fp_type)  # one-line errors for a bad --fp_type / chip
    chip = with_fp_type(o.chip, o.fp_type)  # the chip, its float layers in --fp_type (auto: TPU-MLIR's FLOAT_MAP)
    cfg = SearchConfig(methods=tuple(o.methods.split(",")), max_float_layers=o.max_float_layers,
                       expected_cos=o.expected_cos, strategy=o.strategy, method_batch=o.method_batch,
                       compare_layers=compare, compare_weights=cweights, chip=chip)
    _, flag_kw = calibration_flags(o, "kl", tool="search")  # --histogram_bin_num, --tune_list, --debug_cmd
    fn, params = load_model(o)
    g = fn.graph
    if compare:
        unknown = [c for c in compare if c not in g.tensors]
        if unknown:
            raise SearchError(f"--global_compare_layers names {unknown} which are not canonical tensors of the model (see `qsens ops`)")
    dataset = o.dataset if (o.dataset or o.data_list) else None
    cal_files = select_files(dataset=dataset, data_list=o.data_list, input_num=o.input_num, seed=o.seed)
    pool = select_files(dataset=dataset, data_list=o.data_list, input_num=0, seed=o.seed)
    if o.inference_num > len(pool):
        raise SearchError(f"--inference_num {o.inference_num} but only {len(pool)} samples are available in "
                          f"{o.dataset or o.data_list}; lower --inference_num or add images")
    inf_files = pool[: o.inference_num]
    labels = sample_labels(inf_files, o)
    pp = preprocess_for(o, g)
    stats = CompileStats()
    base = None
    if o.calibration_table:
        base = read_cali_table(o.calibration_table)
        check_table_matches(base, g.tensors, o.calibration_table)
    # TPU-MLIR's flow: run_calibration (v2 statistics, KL tuned) gives the base table, run_sensitive_layer then
    # generates its per-method tables with the v1 statistics (checked against 1.23: tests/test_tpu_mlir_oracle.py)
    phase = PhaseCheckpoint(os.path.join(out_dir, CAL_CKPT), {
        "model": file_sha(o.model), "ops": g.op_names, "files": cal_files, "pp": repr(pp), "methods": cfg.methods,
        "hist": o.hist, "tune_num": o.tune_num, "batch": o.batch, "base": base is None,
        **({"bins": flag_kw["n_bins"], "tune_files": flag_kw["tune_files"]} if flag_kw["n_bins"] != 2048 or
           flag_kw["tune_files"] else {}),
        **({"tune_steps": flag_kw["tune_steps"]} if flag_kw["tune_steps"] != DEFAULT_TUNE_STEPS else {})})
    saved = phase.load() if o.resume else None
    t_cal, cpu_cal = time.time(), time.process_time()
    if saved is not None:
        cal = Calibration.from_json(saved["cal"])
        base_cal = Calibration.from_json(saved["base_cal"]) if saved.get("base_cal") else None
        grid_lo = saved.get("p999", {})
        echo(f"resuming: calibration reused from {phase.path}")
    else:
        # one statistics pass for both: run_sensitive_layer's method tables (o.hist, v1 by default) and, without
        # --calibration_table, run_calibration's base table (v2, KL tuned); the search's chunk shares executables
        specs = [(cfg.methods, o.hist, cfg.methods)] + ([(("kl",), "v2", ("kl",))] if base is None else [])
        cals = calibrate_multi(fn.model, cal_files, pp, specs=specs, progress=not o.quiet, stats=stats, batch=o.batch,
                               stream_tune=memory.budget_set(),  # --max_memory: the tuner's activations streamed
                               keep_bytes=0 if memory.budget_set() else PASS1_KEEP_BYTES, **flag_kw)
        cal, base_cal = cals[0], (cals[1] if base is None else None)
        from ..calib.methods import histogram_abs_percentile

        grid_lo = {t: histogram_abs_percentile(r, 99.9) for t, r in cal.stats.items()}
        phase.save({"cal": cal.to_json(), "base_cal": base_cal.to_json() if base_cal is not None else None,
                    "p999": grid_lo})
    t_cal = time.time() - t_cal
    cal_cores = (time.process_time() - cpu_cal) / max(t_cal, 1e-9)  # every thread: statistics worker, XLA's pool
    if o.tune_num <= 0:
        print("note: --tune_num 0: untuned method thresholds (TPU-MLIR's SL-old would crash here)", file=sys.stderr)
    cali_path = os.path.join(out_dir, "cali_table")
    if base is None:  # the table qsens writes to <out_dir>/cali_table, headers included
        base = CaliTable(base_cal.table_entries("kl", True), headers=tuple(cali_header_lines(
            method="kl", mlir=o.model, histogram_bins=flag_kw["n_bins"], sample_number=base_cal.n_samples,
            tune_number=base_cal.tune_num, version_style="kld-mid")))  # run_calibration 1.23's header
    inputs = load_inputs(inf_files, g, pp, compact=memory.budget_set())  # --max_memory: 8-bit pixels

    def extra_files():  # run_sensitive_layer always writes its per-method tables; the base only if qsens made it
        base_files = [] if base_cal is None else write_tables(base_cal, cali_path, main_method="kl", mlir=o.model,
                                                              write_method_tables=False, histogram_bins=flag_kw["n_bins"])
        return {"calibration_tables": base_files + write_tables(cal, cali_path, main_method=None, mlir=o.model,
                                                                method_names=SENSITIVE_NAMES,
                                                                histogram_bins=flag_kw["n_bins"])}

    post_id = file_sha(o.post_process) if o.post_process else None
    if o.variant != "sensitive":
        return _run_variant(o, fn, base, cal, grid_lo, inputs, labels, post, post_id, compare, cweights, stats,
                            extra_files, phase, echo, t0, t_cal)
    chunk = memory.search_chunk(len(inf_files), requested_chunk, devices.default())
    res = search(fn.model, base, cal.tuned, inputs, cfg, out_dir=out_dir, qtable_path=o.quantize_table, chunk=chunk,
                 labels=labels, resume=o.resume, post_process=post, progress=not o.quiet,
                 extra_files=extra_files, stats=stats, post_process_id=post_id, echo=echo,
                 pre_timings={"calibration_s": t_cal, "calibration_cores": cal_cores})
    phase.remove()  # the search finished (or exited early): nothing left to resume
    if res.early_exit:
        return res
    s = res.summary
    echo(">>>run result:")
    echo(f"int8 outputs_cos:{s['int8']['similarity']:.6f} old")
    echo(f"mix model outputs_cos:{s['mix_new_table']['similarity']:.6f}")
    echo(f"  (plain cosine: INT8 {s['int8']['cosine']:.6f}, MIX original table {s['mix_original_table']['cosine']:.6f}, "
         f"MIX new table {s['mix_new_table']['cosine']:.6f}; similarity = 0.5+0.5*cos)")
    if "top1_agreement" in s["int8"]:
        echo(f"  top-1 agreement with FP32 on {s['n_images']} images: INT8 {s['int8']['top1_agreement']:.3f}, "
             f"MIX original table {s['mix_original_table']['top1_agreement']:.3f}, MIX new table {s['mix_new_table']['top1_agreement']:.3f}")
    echo_labelled(s.get("labelled"), echo)
    if s.get("f32_ops"):
        echo(f"  ops {o.chip.upper()} keeps in F32 inside the INT8 model: "
             + "; ".join(f"{k} ({v})" for k, v in s["f32_ops"].items()))
    echo(f"float layers ({len(res.float_layers)}): {', '.join(res.float_layers)}")
    echo(f"Output mix quantization table to {res.files['qtable']}")
    echo(f"total time:{time.time() - t0}  (calibration {t_cal:.1f} s on {cal_cores:.2f} cores, search "
         f"{res.timings['search_s']:.1f} s on {res.timings['search_cores']:.2f} cores, "
         f"{res.evaluated_ops} ops evaluated, XLA compile {stats.compile_s:.1f} s for {stats.traces} executables, "
         f"{devices.default().describe()})")
    echo("success sensitive layer search")
    return res


def _run_variant(o, fn, base, cal, grid_lo, inputs, labels, post, post_id, compare, cweights, stats, extra_files,
                 phase, echo, t0, t_cal):
    """``qsens search --variant NAME``: a :mod:`qsens.search.variants` strategy on the base table."""
    from ..quant.chip import with_fp_type
    from .variants import make_variant
    from .varjob import variant_search

    bounds = {t: (float(grid_lo.get(t, cal.stats[t].abs_max)), float(cal.stats[t].abs_max)) for t in cal.stats}
    v = make_variant(o.variant, expected_cos=o.expected_cos, max_float_layers=o.max_float_layers,
                     unit_len=o.unit_len, top_k=o.top_k, grid_size=o.grid_size, grid_bounds=bounds,
                     optax_steps=o.optax_steps, optax_lr=o.optax_lr, float_budget_macs=o.float_budget_macs,
                     score=o.score, seed=o.seed)
    res = variant_search(fn.model, base, inputs, v, out_dir=o.out_dir, qtable_path=o.quantize_table,
                         resume=o.resume, post_process=post, post_process_id=post_id, compare_layers=compare,
                         compare_weights=cweights, progress=not o.quiet, echo=echo, stats=stats, chunk=o.batch,
                         labels=labels, extra_files=extra_files, chip=with_fp_type(o.chip, o.fp_type))
    phase.remove()
    if res["early_exit"]:
        return res
    s = res["summary"]
    echo(">>>run result:")
    echo(f"int8 outputs_cos:{s['int8']['similarity']:.6f} old")
    if s["n_thresholds_changed"]:
        echo(f"int8 outputs_cos with the new table:{s['int8_new_table']['similarity']:.6f} "
             f"({s['n_thresholds_changed']} thresholds changed)")
    echo(f"mix model outputs_cos:{s['mix_new_table']['similarity']:.6f}")
    echo(f"  (plain cosine: INT8 {s['int8']['cosine']:.6f}, MIX new table {s['mix_new_table']['cosine']:.6f}; "
         "similarity = 0.5+0.5*cos)")
    echo_labelled(s.get("labelled"), echo)
    echo(f"float layers ({len(res['float_layers'])}): {', '.join(res['float_layers'])}")
    c = res["counts"]
    echo(f"Output mix quantization table to {res['files']['qtable']}")
    echo(f"total time:{time.time() - t0}  (calibration {t_cal:.1f} s, {o.variant} {res['timings']['search_s']:.1f} s: "
         f"{s['n_evaluations']} exact evaluations in {c['walks']} walks + {c['whole_runs']} whole runs, XLA compile "
         f"{stats.compile_s:.1f} s for {stats.traces} executables, {stats.calls} calls)")
    echo(f"success {o.variant} search")
    return res


# ------------------------------------------------------------------------------------------------ qtable
@dataclasses.dataclass
class QtableOptions(DataOptions):
    """TPU-MLIR ``run_qtable.py`` flags (``--input_num``: the images the search scores, default 10)."""

    calibration_table: str | None = None
    input_num: int = 10
    expected_cos: float = 0.99
    min_layer_cos: float = 0.99
    global_compare_layers: str | None = None
    post_process: str | None = None
    chip: str = "bm1684"
    fp_type: str = "auto"
    debug_cmd: str = ""  # run_qtable's --debug_cmd: logging keys only (qsens.calib.flags)
    checkpoint_every_s: float = 10.0
    loss_table: str = "full_loss_table.txt"
    quantize_table: str = "qtable"
    out_dir: str = "."
    resume: bool = False
    batch: int = 10
    quiet: bool = False



def run_qtable(o: QtableOptions, *, echo: Callable[[str], None] = print):
    """``qsens qtable``: returns the :class:`~qsens.search.job.QtableResult`."""
    from ..data.dataset import select_files
    from ..engine import CompileStats, enable_compilation_cache
    from ..pipeline import load_inputs
    from ..tables import check_table_matches, read_cali_table
    from .job import job_problem, qtable_search

    t0 = time.time()
    if not o.calibration_table:
        raise SearchError("qsens qtable needs --calibration_table (the table run_qtable.py searches with; make one "
                          "with `qsens calibrate`)")
    from ..quant.chip import get_chip, with_fp_type

    get_chip(o.chip)  # one-line error for an unsupported chip
    chip = with_fp_type(o.chip, o.fp_type)  # auto: TPU-MLIR's FLOAT_MAP (BM1684 F32, BM1684X F16); bad: one-line error
    from ..calib.flags import parse_debug_cmd

    parse_debug_cmd(o.debug_cmd, "qtable")  # logging keys only; the rest: one-line errors
    enable_compilation_cache()
    out_dir = ensure_out_dir(o.out_dir)
    for p in (o.quantize_table, o.loss_table):
        path = p if os.path.isabs(p) else os.path.join(out_dir, p)
        ensure_out_dir(os.path.dirname(os.path.abspath(path)))
    compare, cweights = parse_compare_layers(o.global_compare_layers)
    post = load_post_process(o.post_process)
    fn, _ = load_model(o)
    g = fn.graph
    table = read_cali_table(o.calibration_table)
    check_table_matches(table, g.tensors, o.calibration_table)
    if compare:
        unknown = [c for c in compare if c not in g.tensors]
        if unknown:
            raise SearchError(f"--global_compare_layers names {unknown} which are not canonical tensors of the model (see `qsens ops`)")
    dataset = o.dataset if (o.dataset or o.data_list) else None
    files = select_files(dataset=dataset, data_list=o.data_list, input_num=o.input_num, seed=o.seed)
    labels = sample_labels(files, o)
    inputs = load_inputs(files, g, preprocess_for(o, g), compact=memory.budget_set())
    stats = CompileStats()
    res = qtable_search(fn.model, table, inputs, expected_cos=o.expected_cos, min_layer_cos=o.min_layer_cos,
                        out_dir=out_dir, qtable_path=o.quantize_table, loss_table=o.loss_table,
                        mlir_name=os.path.basename(o.model), resume=o.resume, compare_layers=compare,
                        compare_weights=cweights, post_process=post,
                        post_process_id=file_sha(o.post_process) if o.post_process else None,
                        progress=not o.quiet, echo=echo, stats=stats, chunk=o.batch,
                        checkpoint_every_s=o.checkpoint_every_s, chip=chip)
    if res.early_exit:
        return res
    s = res.summary
    echo(">>>run result:")
    echo(f"int8 outputs_cos:{res.all_int8_similarity:.6f} old")
    echo(f"mix model outputs_cos:{res.reported_mix_similarity:.6f}")
    echo(f"  (TPU-MLIR reports the last step's value; the qtable's model scores {res.true_mix_similarity:.6f}; "
         f"{s['n_steps']} float steps, {s['n_reverted']} reverted, end: {s['end']}"
         + (f" '{s['exception']}'" if s["exception"] else "") + ")")
    if labels is not None:  # the job's problem again (same executables cache): FP32, INT8 and the qtable's model
        problem = job_problem(fn.model, table, inputs, compare, cweights, post, stats, None, o.batch, chip)
        lab = labelled_accuracy(problem, res.float_layers, labels)
        if lab is not None:
            s["labelled"] = lab
            echo_labelled(lab, echo)
    echo(f"float layers ({len(res.float_layers)}): {', '.join(res.float_layers)}")
    echo(f"Output mix quantization table to {res.files['qtable']}")
    echo(f"total time:{time.time() - t0}  (search {res.timings['search_s']:.1f} s, XLA compile "
         f"{stats.compile_s:.1f} s for {stats.traces} executables)")
    return res


# ------------------------------------------------------------------------------------------------ calibrate --search
@dataclasses.dataclass
class CalibrationSearchOptions(DataOptions):
    """TPU-MLIR 1.30.2 ``run_calibration.py --search ...`` flags (its defaults)."""

    search: str = "search_qtable"  # search_qtable | search_threshold
    calibration_table: str = "cali_table"
    quantize_table: str | None = None
    input_num: int = 0
    inference_num: int = 30
    tune_num: int = 5
    expected_cos: float = 0.99
    max_float_layers: int = 5
    quantize_method_list: str = "MSE"
    benchmark_method: str = "cos"
    histogram_bin_num: Any = 2048  # --histogram_bin_num (qsens.calib.flags)
    tune_list: str | None = None  # --tune_list: the SimpleTuner's samples
    debug_cmd: str = ""  # --debug_cmd: tune_steps=N (every calibrator of the search) and logging keys
    cluster: bool = False
    post_process: str | None = None
    chip: str = "bm1684"
    resume: bool = False
    batch: int = 10
    quiet: bool = False



def parse_method_list(s: str) -> list[str]:
    """``--quantize_method_list``: comma list, case-insensitive, ``use_`` prefixes allowed (TPU-MLIR drops names it
    does not know; qsens names them, since a silently dropped method changes the search)."""
    from ..calibrate import METHODS

    out = []
    for m in s.split(","):
        k = m.strip().lower().removeprefix("use_")
        if not k:
            continue
        if k in ("aciq_gauss", "aciq_laplace"):
            raise SearchError(f"--quantize_method_list {m.strip()}: ACIQ is not implemented in qsens; use mse, kl, max "
                              "or percentile9999")
        if k not in METHODS:
            raise SearchError(f"--quantize_method_list names an unknown method {m.strip()!r}; use mse, kl, max or "
                              "percentile9999")
        out.append(k)
    if not out:
        raise SearchError("--quantize_method_list is empty; the default is MSE")
    return out


def run_calibration_search(o: CalibrationSearchOptions, *, echo: Callable[[str], None] = print) -> dict | None:
    """``qsens calibrate --search search_qtable | search_threshold`` (TPU-MLIR 1.30.2, docs/search_qtable.md)."""
    import shutil

    from ..calibrate import Calibration, calibrate, write_tables
    from ..data.dataset import select_files
    from ..engine import CompileStats, enable_compilation_cache
    from ..pipeline import load_inputs
    from ..tables import check_table_matches, read_cali_table, write_quantize_table
    from .calijob import search_qtable_job, search_threshold_job
    from .calisearch import SEARCH_METHODS, SearchQtable
    from .problem import Problem

    t0 = time.time()
    o = dataclasses.replace(o, batch=o.batch or 10)
    if o.search not in ("search_qtable", "search_threshold", "fast_search"):
        raise SearchError(f"--search {o.search}: qsens implements search_qtable, fast_search and search_threshold "
                          "(mix_search is run_qtable's greedy search: use qsens qtable)")
    if not o.quantize_table:
        raise SearchError("please set --quantize_table when --search is not False (as run_calibration.py requires)")
    if o.chip.lower() != "bm1684":
        raise SearchError(f"--chip {o.chip}: qsens calibrate --search simulates BM1684 only; use --chip bm1684")
    if o.benchmark_method not in ("cos", "snr"):
        raise SearchError(f"--benchmark_method {o.benchmark_method}: use cos or snr")
    if not 0.0 < float(o.expected_cos) <= 1.0:
        raise SearchError(f"--expected_cos {o.expected_cos} is outside (0, 1]; TPU-MLIR's scale is 0.5+0.5*cos")
    methods = list(SEARCH_METHODS) if o.search == "search_threshold" else (
        ["kl"] if o.search == "fast_search" else parse_method_list(o.quantize_method_list))
    cali = o.calibration_table
    out_dir = ensure_out_dir(os.path.dirname(os.path.abspath(cali)))
    from .aidflow import with_aids

    o = with_aids(o, out_dir=out_dir, echo=echo)  # TPU-MLIR runs the aids with search_threshold, not search_qtable
    ensure_out_dir(os.path.dirname(os.path.abspath(o.quantize_table)))
    from ..calib.flags import calibration_flags

    # --histogram_bin_num / --tune_list / --debug_cmd tune_steps=N reach every calibrator of the search (1.30.2 builds
    # them from args / tune_ds / args.debug_cmd)
    _, flag_kw = calibration_flags(o, "kl", tool="calisearch")
    ckw = {"n_bins": flag_kw["n_bins"], "tune_files": flag_kw["tune_files"]}
    from ..calib.flags import DEFAULT_TUNE_STEPS

    if flag_kw["tune_steps"] != DEFAULT_TUNE_STEPS:
        ckw["tune_steps"] = flag_kw["tune_steps"]
    tune_num = flag_kw["tune_num"]
    enable_compilation_cache()
    fn, _ = load_model(o)
    g = fn.graph
    dataset = o.dataset if (o.dataset or o.data_list) else None
    cal_files = select_files(dataset=dataset, data_list=o.data_list, input_num=o.input_num, seed=o.seed)
    n_inf = min(o.inference_num, len(cal_files)) if o.search == "search_threshold" else o.inference_num
    inf_files = select_files(dataset=dataset, data_list=o.data_list, input_num=n_inf, seed=o.seed)
    labels = sample_labels(inf_files, o) if o.search != "search_threshold" else None  # it scores tables only
    pp = preprocess_for(o, g)
    mlir = os.path.basename(o.model)
    write_quantize_table(o.quantize_table, [], sample_number=o.input_num)  # TPU-MLIR writes the initial qtable first
    existing = os.path.exists(cali) and not (o.resume and os.path.exists(os.path.join(out_dir, CAL_CKPT)))
    if existing and o.search == "search_threshold":
        echo(f"warning: [search_threshold] {cali} already exists; skip threshold search and use it as-is "
             "(TPU-MLIR 1.30.2 does the same; remove the file to search)")
        return None
    stats = CompileStats()
    inputs = load_inputs(inf_files, g, pp, compact=memory.budget_set())  # --max_memory: 8-bit pixels
    suffix = "_tune" if o.tune_num > 0 else ".1"
    post = load_post_process(o.post_process)
    pkw = {"stats": stats, "chunk": o.batch, "post_process": post}
    head: list[str] = []
    if o.search == "fast_search":
        from .calisearch import FastSearch

        if existing:  # TPU-MLIR uses an existing table silently
            base = read_cali_table(cali)
            check_table_matches(base, g.tensors, cali)
        else:  # plain run_calibration: KL (v2 statistics) tuned, its .1 removed
            cal = calibrate(fn.model, cal_files, pp, methods=("kl",), hist="v2", tune_num=tune_num,
                            tune_methods=("kl",), progress=not o.quiet, stats=stats, batch=o.batch, **ckw)
            from ..tables import write_cali_table

            write_cali_table(cali, cal.table_entries("kl", o.tune_num > 0), method="['kl']", mlir=mlir,
                             histogram_bins=ckw["n_bins"], sample_number=cal.n_samples, tune_number=cal.tune_num,
                             version_style="kld-new")
            base = read_cali_table(cali)
        problem = Problem.from_table(fn.model, base, inputs, **pkw)
        strategy = FastSearch(expected_cos=o.expected_cos, max_rounds=o.inference_num)
        key = {"model": g.op_names, "table": problem.th0.tolist(), "n": problem.n, "expected_cos": o.expected_cos,
               "search": "fast_search"}
        res = search_qtable_job(problem, strategy, base, out_dir=out_dir, qtable_path=o.quantize_table,
                                sample_number=o.input_num, mlir=mlir, key=key, resume=o.resume,
                                progress=not o.quiet, echo=echo, head_lines=[], reused=existing)
        return _echo_qtable_result(res, o, echo, t0, problem, labels)
    if existing:  # TPU-MLIR: the existing table is the only method's thresholds (the per-method tables are skipped)
        echo(f"warning: [search_qtable] {cali} already exists; skip per-method threshold generation, run sensitivity "
             "search against the single existing table (TPU-MLIR 1.30.2 does the same; remove the file to calibrate)")
        base = read_cali_table(cali)
        check_table_matches(base, g.tensors, cali)
        method_thresholds = {methods[0]: {t: e.threshold for t, e in base.entries.items()}}
        methods = methods[:1]
        head.append(f"[search_qtable] {cali} already exists; skip per-method threshold generation, run sensitivity "
                    "search against the single existing table.")
    else:
        phase = PhaseCheckpoint(os.path.join(out_dir, CAL_CKPT), {
            "model": file_sha(o.model), "ops": g.op_names, "files": cal_files, "pp": repr(pp), "methods": methods,
            "tune_num": o.tune_num, "batch": o.batch,
            **({"bins": ckw["n_bins"], "tune_files": ckw["tune_files"]} if ckw["n_bins"] != 2048 or ckw["tune_files"]
               else {}), **({"tune_steps": ckw["tune_steps"]} if "tune_steps" in ckw else {})})
        saved = phase.load() if o.resume else None
        if saved is not None:
            cal = Calibration.from_json(saved["cal"])
            echo(f"resuming: calibration reused from {phase.path}")
        else:
            cal = calibrate(fn.model, cal_files, pp, methods=methods, hist="v2", tune_num=tune_num,
                            tune_methods=methods, progress=not o.quiet, stats=stats, batch=o.batch, **ckw)
            write_tables(cal, cali, main_method=None, mlir=mlir, method_names={m: m for m in methods},
                         version_style="kld-new", histogram_bins=ckw["n_bins"])
            phase.save({"cal": cal.to_json()})
        method_thresholds = cal.tuned if o.tune_num > 0 else cal.untuned
        head.append(f"quantize_method_list={methods}")
        if o.search == "search_threshold":
            tables = {m: f"{os.path.basename(cali)}_{m}{suffix}" for m in methods}
            res = search_threshold_job(
                lambda m: Problem.from_table(fn.model, read_cali_table(f"{cali}_{m}{suffix}"), inputs, **pkw),
                tables, benchmark_method=o.benchmark_method, log_dir=out_dir, mlir=mlir)
            shutil.copyfile(f"{cali}_{res['best']}{suffix}", cali)
            phase.remove()
            echo(f"{o.benchmark_method} similarity scores: {res['scores']}")
            echo(f"optimal_method_name: {res['best']}, optimal_value: {res['scores'][res['best']]}")
            echo(f"wrote {cali} (= {os.path.basename(cali)}_{res['best']}{suffix}) in {time.time() - t0:.1f} s")
            res["files"] = {"calibration_table": cali, "log": os.path.join(out_dir, "Search_Threshold")}
            from .job import atomic_write

            atomic_write(os.path.join(out_dir, "search_threshold.json"), json.dumps(res, indent=1) + "\n")
            return res
        src = f"{cali}_mse{suffix}" if "mse" in methods else f"{cali}_{methods[0]}{suffix}"
        shutil.copyfile(src, cali)  # TPU-MLIR: the base table is a byte copy of the MSE (else first) table
        base = read_cali_table(cali)
    problem = Problem.from_table(fn.model, base, inputs, **pkw)
    strategy = SearchQtable(methods, method_thresholds, expected_cos=o.expected_cos,
                            max_float_layers=o.max_float_layers, cluster=o.cluster)
    key = {"model": g.op_names, "table": problem.th0.tolist(), "methods": methods, "n": problem.n,
           "post_process": file_sha(o.post_process) if o.post_process else None,
           "expected_cos": o.expected_cos, "max_float_layers": o.max_float_layers, "cluster": o.cluster,
           "method_thresholds": {m: [float(v) for _, v in sorted(d.items())] for m, d in method_thresholds.items()}}
    res = search_qtable_job(problem, strategy, base, out_dir=out_dir, qtable_path=o.quantize_table,
                            sample_number=o.input_num, mlir=mlir, key=key, resume=o.resume, progress=not o.quiet,
                            echo=echo, head_lines=head, reused=existing)
    if not existing:
        phase.remove()
    return _echo_qtable_result(res, o, echo, t0, problem, labels)


def _echo_qtable_result(res, o, echo, t0, problem, labels):
    if res is None:
        return None
    echo(">>>run result:")
    echo(f"float layer number: {len(res['float_layers'])}, mix model outputs_cos: {res['reported_mix_similarity']:.6f}")
    echo(f"int8 outputs_cos:{res['all_int8_similarity']:.6f} old")
    echo(f"mix model outputs_cos:{res['reported_mix_similarity']:.6f}")
    st = res["state"]
    if res["defects"]["D1_all_searched_layers_written"]:
        echo(f"  note: as TPU-MLIR 1.30.2 does, the qtable lists all {len(res['float_layers'])} searched layers while "
             f"the similarity above is the top-{o.max_float_layers} model's ({st['set_fp']}); the qtable's model "
             f"scores {res['true_mix_similarity']:.6f}")
    elif res["defects"]["D2_last_probe"]:
        echo(f"  note: auto-N ended on a probe below expected_cos (TPU-MLIR keeps its last probe); the qtable's "
             f"model scores {res['true_mix_similarity']:.6f}")
    lab = labelled_accuracy(problem, res["float_layers"], labels, st.get("th")) if labels is not None else None
    if lab is not None:  # the qtable's model as true_mix_similarity scores it (its float layers, the final thresholds)
        res["labelled"] = lab
        echo_labelled(lab, echo)
    echo(f"Output mix quantization table to {o.quantize_table}")
    echo(f"total time:{time.time() - t0}")
    echo("success search qtable")
    return res
