"""``qsens`` command line.  Strings are parsed here; algorithms live in the library.

Errors a user can cause print ``qsens: error: <one line>`` and exit 2 (no traceback; ``QSENS_DEBUG=1``
shows one).  Verbs: ``zoo``, ``ops``, ``check``, ``calibrate``, ``search``, ``qtable``, ``report``, ``demo``; ``names``,
``compare`` and ``run`` live in :mod:`qsens.interop`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import QsensError


# ---------------------------------------------------------------------------------------------------- args
def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .data.preprocess import parse_input_shapes

    p.add_argument("model", help="ONNX model file")
    p.add_argument("--input_shapes", type=parse_input_shapes, default=None,
                   help="shapes of the inputs, TPU-MLIR syntax: [[1,3,224,224]] (needed for dynamic non-batch dims)")
    p.add_argument("--name_style", choices=("tpu_mlir", "onnx"), default="tpu_mlir",
                   help="canonical op names: TPU-MLIR's '<output>_<OpType>' (default) or the ONNX output name")
    p.add_argument("--names_map", default=None, metavar="FILE",
                   help="JSON of qsens name -> your TPU-MLIR name (`qsens names --write-map`): every table, qtable "
                   "and dump uses your model_transform.py's names")


_DEBUG_CMD_HELP = {
    "calibrate": "TPU-MLIR's 'k1;k2=v': use_max, use_percentile9999 (untuned), use_mse, tune_steps=N; debug_log, "
                 "print_debug_info, dump_list (no numeric effect)",
    "search": "TPU-MLIR's 'k1;k2=v': tune_steps=N (every method's tuner); debug_log, print_debug_info, max_sampling=N, "
              "dump_tensor_diff_by_html, visual_tensor=X (no numeric effect)",
    "qtable": "TPU-MLIR's 'k1;k2=v': debug_log, max_sampling=N, dump_tensor_diff_by_html, visual_tensor=X (no numeric "
              "effect: run_qtable calibrates nothing)",
}


def _add_tpu_mlir_calibration_flags(p: argparse.ArgumentParser, *, debug_cmd: str) -> None:
    """run_calibration.py / run_sensitive_layer.py flags that change the thresholds (qsens.calib.flags)."""
    p.add_argument("--histogram_bin_num", default="2048", help="histogram bins for KL (default 2048)")
    p.add_argument("--tune_list", default=None, metavar="FILE",
                   help="samples for the SimpleTuner, one path per line (its first --tune_num lines; default: the first "
                   "--tune_num calibration samples)")
    p.add_argument("--debug_cmd", default="", help=_DEBUG_CMD_HELP[debug_cmd])


def _add_data_args(p: argparse.ArgumentParser, *, input_num: int = 0, labels: bool = False) -> None:
    from .data.preprocess import parse_dims, parse_floats

    g = p.add_argument_group("dataset and preprocessing (TPU-MLIR flags)")
    g.add_argument("--dataset", help="directory of images (jpg/jpeg/png/bmp/jfif) or .npy/.npz samples, searched recursively")
    g.add_argument("--data_list", help="file with one sample path per line (overrides --dataset)")
    if labels:
        g.add_argument("--labels", metavar="FILE", default=None,
                       help="ImageNet labels, lines '<file> <label>' (file: base name or path relative to the dataset), "
                       "for the summary's labelled top-1/top-5; wins over the labels qsens infers from "
                       "ILSVRC2012_val_* names, synset sub-folders (n01440764/) and zoo images (qsens only)")
    g.add_argument("--input_num", type=int, default=input_num, help=f"number of samples, 0 = all (default {input_num})")
    g.add_argument("--seed", type=int, default=1684, help="shuffle seed of the sample selection (TPU-MLIR: 1684)")
    g.add_argument("--preset", default=None, help="preprocessing preset (default: the model file's stem if it names one)")
    g.add_argument("--resize_dims", type=parse_dims, default=None, help="H,W to resize to before the center crop")
    g.add_argument("--keep_aspect_ratio", action="store_true", default=None,
                   help="resize keeping the aspect ratio (how: --keep_ratio_mode)")
    g.add_argument("--keep_ratio_mode", choices=("letterbox", "short_side_scale"), default=None,
                   help="with --keep_aspect_ratio: letterbox = fit the long side and pad (TPU-MLIR's default); "
                        "short_side_scale = fit the short side, centre crop")
    g.add_argument("--pad_type", choices=("center", "normal"), default=None,
                   help="letterbox padding: center (default) or normal (image top-left, pad bottom/right)")
    g.add_argument("--pad_value", type=int, default=None, help="letterbox padding value (default 0)")
    g.add_argument("--pixel_format", choices=("rgb", "bgr", "gray", "rgba"), default=None)
    g.add_argument("--channel_format", choices=("nchw", "nhwc"), default=None)
    g.add_argument("--mean", type=parse_floats, default=None, help="per-channel mean, e.g. 127,127,127")
    g.add_argument("--scale", type=parse_floats, default=None, help="per-channel scale: (x - mean) * scale")


def _add_aid_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy aids (TPU-MLIR run_calibration.py --we --bc --sq; docs/accuracy_aids.md)")
    g.add_argument("--we", action="store_true", help="weight equalization of Conv -> (ReLU) -> Conv pairs before calibration")
    g.add_argument("--bc", action="store_true", help="bias correction of Conv layers whose layer cos < --min_layer_cos "
                   "(kept when the outputs cos does not drop), then re-calibration")
    g.add_argument("--sq", action="store_true", help="SmoothQuant (LayerNorm / Mul -> MatMul only, as TPU-MLIR)")
    g.add_argument("--bc_inference_num", type=int, default=30, help="images bias correction scores (default 30)")
    g.add_argument("--min_layer_cos", type=float, default=0.99, help="bias correction's layer cos bound (default 0.99)")
    g.add_argument("--we_relu6", choices=("tpu_mlir", "skip"), default="tpu_mlir",
                   help="pairs across a ReLU6: tpu_mlir = equalize them and leave the bound at 6 as TPU-MLIR does (the "
                   "float model changes); skip = leave them alone (qsens only; the float model is unchanged)")
    g.add_argument("--save_model", default=None, metavar="FILE",
                   help="where the aided ONNX goes (default <out_dir>/<model>.aided_<aids>.onnx); model_transform.py on "
                   "it gives TPU-MLIR the same weights")


def _add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale (qsens only; README 'Scale')")
    g.add_argument("--devices", default="1", help="split the inference images over N devices (or 'all'): "
                   "jax.devices(), across processes in a multi-process run; results equal one device's")
    g.add_argument("--max_memory", default=None, help="memory the search may hold for cached activations, e.g. "
                   "1.5G or 800M (default: half the device's, on CPU half the host's available memory); the rest "
                   "is recomputed")
    g.add_argument("--coordinator_address", default=None, help="multi-process: host:port of process 0 "
                   "(jax.distributed; or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num_processes", type=int, default=None, help="multi-process: how many (or JAX_NUM_PROCESSES)")
    g.add_argument("--process_id", type=int, default=None, help="multi-process: this one's id (or JAX_PROCESS_ID); "
                   "only process 0 writes files")


def setup_scale(args) -> None:
    """``--devices``, ``--max_memory`` and the multi-process flags, before anything runs on a device.

    In a multi-process run every process computes the same search; processes other than 0 write into a private
    temporary folder (seeded with ``--out_dir``'s checkpoints when resuming) and print nothing."""
    global _echo_enabled
    if not hasattr(args, "devices"):
        return
    from . import devices
    from .search import memory

    multi = devices.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    devices.set_default(devices.select(args.devices))
    memory.set_budget(memory.parse_bytes(args.max_memory) if args.max_memory else None)
    if multi and not devices.is_writer():
        import atexit
        import shutil
        import tempfile

        private = tempfile.mkdtemp(prefix=f"qsens_p{devices.process_index()}_")
        atexit.register(shutil.rmtree, private, True)
        src = getattr(args, "out_dir", None)
        if src and getattr(args, "resume", False) and os.path.isdir(src):
            for f in os.listdir(src):
                if ".ckpt." in f:
                    shutil.copy(os.path.join(src, f), private)
        args.out_dir = private  # relative output paths follow it; absolute ones are moved into it
        for k in ("quantize_table", "loss_table"):
            v = getattr(args, k, None)
            if isinstance(v, str) and os.path.isabs(v):
                setattr(args, k, os.path.join(private, os.path.basename(v)))
        args.quiet = True
        _echo_enabled = False


_echo_enabled = True


def load_model_from_args(args):
    from .search.workflows import load_model

    return load_model(args)


def preprocess_from_args(args, graph):
    from .search.workflows import preprocess_for

    return preprocess_for(args, graph)


def select_from_args(args, default_dataset=None):
    from .data.dataset import select_files

    dataset = args.dataset if (args.dataset or args.data_list) else default_dataset
    return select_files(dataset=dataset, data_list=args.data_list, input_num=args.input_num, seed=args.seed)


# ---------------------------------------------------------------------------------------------------- verbs
def cmd_zoo(args) -> int:
    from .zoo import build_zoo

    root = build_zoo(force=args.force)
    print(root)
    return 0


def cmd_ops(args) -> int:
    fn, params = load_model_from_args(args)
    g = fn.graph
    if args.int8_report:
        from .quant.report import format_report, int8_report

        rows = int8_report(g, args.chip)
        if args.json:
            import json
            from pathlib import Path

            Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"# {args.model}: {len(g.ops)} canonical ops")
        print(format_report(rows, args.chip))
        return 0
    print(f"# {args.model}: {len(g.ops)} canonical ops (incl. {len(g.inputs)} Input), opset {g.opset}, "
          f"{sum(int(v.size) for v in params.values()):,} float params")
    print(f"{'idx':>4}  {'name':<48} {'type':<10} {'shape':<20} onnx nodes")
    for i, op in enumerate(g.ops):
        extra = " relu" + (f"({op.attr('relu_limit'):g})" if op.attr("relu_limit", -1) >= 0 else "") if op.attr("do_relu") else ""
        print(f"{i:>4}  {op.name:<48} {op.type + extra:<10} {str(list(op.out_shapes[0])):<20} {','.join(op.onnx_nodes)}")
    return 0


def check_against_onnxruntime(model_path, fn, params, inputs) -> dict:
    """Max relative error per output and top-1 agreement between qsens and onnxruntime."""
    import jax
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        raise QsensError("`qsens check` needs onnxruntime: pip install -e '.[test]'") from None
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, inputs)
    got = jax.jit(fn)(params, inputs)
    rows = {}
    for (name, y), r in zip(got.items(), ref):
        y = np.asarray(y)
        err = float(np.abs(y - r).max() / max(float(np.abs(r).max()), 1e-30))
        row = {"max_rel_err": err, "shape": list(r.shape)}
        if r.ndim == 2 and r.shape[1] > 1:
            row["top1_agree"] = float(np.mean(np.argmax(y, 1) == np.argmax(r, 1)))
        rows[name] = row
    return rows


def cmd_check(args) -> int:
    from .pipeline import load_inputs
    from .zoo import zoo_path

    fn, params = load_model_from_args(args)
    g = fn.graph
    pp = preprocess_from_args(args, g)
    default = str(zoo_path("images")) if not (args.dataset or args.data_list) else None
    files = select_from_args(args, default)
    inputs = load_inputs(files, g, pp)
    rows = check_against_onnxruntime(args.model, fn, params, inputs)
    ok = True
    print(f"qsens vs onnxruntime on {len(files)} samples of {args.model}:")
    for name, r in rows.items():
        flag = r["max_rel_err"] <= args.tol
        ok &= flag
        t1 = f", top-1 agreement {r['top1_agree']:.3f}" if "top1_agree" in r else ""
        print(f"  {name}: max|qsens-ort|/max|ort| = {r['max_rel_err']:.2e}{t1}  {'OK' if flag else 'FAIL'}")
    return 0 if ok else 1


def cmd_calibrate(args) -> int:
    if args.search and args.search.lower() != "false":
        from .search.workflows import CalibrationSearchOptions, run_calibration_search

        run_calibration_search(CalibrationSearchOptions.from_namespace(args), echo=_echo)
        return 0
    from .calibrate import calibrate, parse_method, write_tables
    from .engine import enable_compilation_cache
    from .search.aidflow import run_aids

    enable_compilation_cache()
    for k, v in run_aids(args, out_dir=os.path.dirname(os.path.abspath(args.calibration_table)), echo=_echo).items():
        setattr(args, k, v)  # calibrate the aided model (TPU-MLIR's calibration after --we / re-calibration after --bc)
    fn, params = load_model_from_args(args)
    g = fn.graph
    files = select_from_args(args)
    pp = preprocess_from_args(args, g)
    from .calib.flags import calibration_flags  # --debug_cmd, --histogram_bin_num, --tune_list (TPU-MLIR's)

    main_method, flag_kw = calibration_flags(args, parse_method(args.cali_method), files)
    methods = [main_method] + [parse_method(m) for m in (args.methods.split(",") if args.methods else []) if parse_method(m) != main_method]
    t0 = time.time()
    cal = calibrate(fn.model, files, pp, methods=methods, hist=args.hist, batch=args.batch, progress=not args.quiet,
                    **flag_kw)
    written = write_tables(cal, args.calibration_table, main_method=main_method, mlir=args.model,
                           write_method_tables=bool(args.methods), histogram_bins=flag_kw["n_bins"])
    print(f"calibrated {len(cal.tensors)} tensors on {cal.n_samples} samples ({args.hist} histograms, "
          f"tune_num {cal.tune_num}) in {time.time() - t0:.1f} s; wrote {', '.join(written)}")
    return 0


def run_search_from_args(args) -> int:
    from .search.workflows import SearchOptions, run_sensitive_search

    run_sensitive_search(SearchOptions.from_namespace(args), echo=_echo)
    return 0


def _echo(s: str) -> None:
    if _echo_enabled:
        print(s, flush=True)


def cmd_search(args) -> int:
    return run_search_from_args(args)


def cmd_qtable(args) -> int:
    from .search.workflows import QtableOptions, run_qtable

    run_qtable(QtableOptions.from_namespace(args), echo=_echo)
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    print(write_report(args.run_dir, args.output, calibration_table=args.calibration_table))
    return 0


def cmd_demo(args) -> int:
    from .zoo import build_zoo

    root = build_zoo(models=("efficientnet_lite0",), progress=True)
    argv = [str(root / "efficientnet_lite0.onnx"), "--dataset", str(root / "images100"), "--input_num", "100",
            "--inference_num", "30", "--expected_cos", "0.9999", "--out_dir", args.out_dir]
    if args.quiet:
        argv.append("--quiet")
    sargs = build_parser().parse_args(["search"] + argv)
    print(f"qsens demo: EfficientNet-Lite0, 100 calibration / 30 inference images of {root / 'images100'}, "
          f"expected_cos 0.9999 -> {args.out_dir}")
    return run_search_from_args(sargs)


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qsens", description="INT8 sensitive-layer search for BM1684 (TPU-MLIR compatible)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("zoo", help="build the real models and images into the user cache (offline)")
    s.add_argument("--force", action="store_true", help="rebuild everything")
    s.set_defaults(fn=cmd_zoo)

    s = sub.add_parser("ops", help="list the canonical (TPU-MLIR Top) ops of a model")
    _add_model_args(s)
    s.add_argument("--int8-report", "--int8_report", dest="int8_report", action="store_true",
                   help="each op's precision in the BM1684 INT8 model; F32 ones with the reason and TPU-MLIR's source")
    s.add_argument("--json", help="with --int8-report: also write the rows to this JSON file")
    s.add_argument("--chip", "--processor", dest="chip", default="bm1684", help="with --int8-report: bm1684 or bm1684x")
    s.set_defaults(fn=cmd_ops)

    s = sub.add_parser("check", help="compare the converted model with onnxruntime on real samples")
    _add_model_args(s)
    _add_data_args(s, input_num=8)
    s.add_argument("--tol", type=float, default=1e-4, help="max relative error allowed (default 1e-4)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("calibrate", help="calibration table(s) like run_calibration.py (streaming, all methods in one pass)")
    _add_model_args(s)
    _add_data_args(s, input_num=0, labels=True)
    s.add_argument("--cali_method", default="kl", help="kl (default, tuned), max, percentile9999 or mse")
    s.add_argument("--methods", default="", help="also write <table>_<m>.1 and <table>_<m>_tune for these methods, "
                   "e.g. max,percentile9999,kl (what the sensitive-layer search uses)")
    s.add_argument("--tune_num", type=int, default=5, help="SimpleTuner samples (0 = untuned thresholds)")
    _add_tpu_mlir_calibration_flags(s, debug_cmd="calibrate")
    s.add_argument("--hist", choices=("v1", "v2"), default="v2",
                   help="v2 (default, TPU-MLIR 1.23 run_calibration): one pass, streaming histogram merge; "
                   "v1: abs-max pass then one histogram width, percentile of |a| (what run_sensitive_layer's "
                   "per-method tables use)")
    s.add_argument("--batch", type=int, default=None, help="images per compiled batch (default min(10, input_num))")
    s.add_argument("-o", "--calibration_table", default="cali_table", help="output table path")
    g = s.add_argument_group("--search (TPU-MLIR 1.30.2 run_calibration.py --search; logs next to -o)")
    g.add_argument("--search", default="False", choices=("False", "search_qtable", "fast_search", "search_threshold"),
                   help="search_qtable: float layers by per-layer loss (qtable at --quantize_table); search_threshold: "
                   "the best of the KL/MAX/Percentile9999/MSE tables by the INT8 model's score")
    g.add_argument("--inference_num", type=int, default=30, help="images the searches score (default 30)")
    g.add_argument("--expected_cos", type=float, default=0.99, help="TPU-MLIR scale 0.5+0.5*cos")
    g.add_argument("--max_float_layers", type=int, default=5)
    g.add_argument("--quantize_method_list", default="MSE", help="search_qtable's methods (default MSE)")
    g.add_argument("--benchmark_method", choices=("cos", "snr"), default="cos", help="search_threshold's score")
    g.add_argument("--cluster", action="store_true", help="search_qtable: KMeans(2) on [cos loss, snr] picks the layers")
    g.add_argument("--post_process", default=None, help="python file defining PostProcess(outputs_dict)")
    g.add_argument("--quantize_table", default=None, help="the qtable to write (required with --search)")
    g.add_argument("--chip", "--processor", dest="chip", default="bm1684")
    g.add_argument("--resume", action="store_true", help="continue an interrupted --search in the same place")
    _add_aid_args(s)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("search", help="sensitive-layer search like run_sensitive_layer.py (writes a qtable)")
    _add_model_args(s)
    _add_data_args(s, input_num=10, labels=True)
    s.add_argument("--inference_num", type=int, default=10, help="evaluation images (a prefix of the shuffled list)")
    s.add_argument("--max_float_layers", type=int, default=5)
    s.add_argument("--expected_cos", type=float, default=0.99,
                   help="TPU-MLIR scale 0.5+0.5*cos: 0.99 means a true cosine of 0.98")
    s.add_argument("--post_process", default=None, help="python file defining PostProcess(outputs_dict)")
    s.add_argument("--global_compare_layers", default=None, help="'a,b' or 'a:0.3,b:0.7' (canonical tensor names)")
    s.add_argument("--calibration_table", default=None, help="existing table (else qsens calibrates: KL, tuned)")
    s.add_argument("--chip", "--processor", dest="chip", default="bm1684")
    s.add_argument("-o", "--quantize_table", default="qtable", help="qtable path (relative: inside --out_dir)")
    s.add_argument("--methods", default="max,percentile9999,kl", help="candidate methods, in TPU-MLIR's order")
    s.add_argument("--tune_num", type=int, default=5)
    _add_tpu_mlir_calibration_flags(s, debug_cmd="search")
    s.add_argument("--fp_type", default="auto", help="float type of the float layers (and of the reference model): "
                   "auto = TPU-MLIR's FLOAT_MAP (F32 on BM1684, F16 on BM1684X), F16 or F32 where the chip mixes them")
    s.add_argument("--hist", choices=("v1", "v2"), default="v1",
                   help="statistics of the per-method candidate tables (TPU-MLIR 1.23's run_sensitive_layer: v1); "
                   "the base table qsens calibrates without --calibration_table is run_calibration's (v2)")
    s.add_argument("--out_dir", default=".")
    s.add_argument("--resume", action="store_true", help="continue from <out_dir>/search.ckpt.json")
    s.add_argument("--strategy", choices=("fast", "naive"), default="fast")
    s.add_argument("--batch", type=int, default=None,
                   help="images per compiled batch (default: 10 in the calibration; in the search the inference images "
                   "in as few equal chunks of at most 32 as possible, 10 under --max_memory)")
    s.add_argument("--method_batch", choices=("loop", "concat"), default="loop",
                   help="fast strategy: suffixes of the candidates one after another (loop) or stacked (concat)")
    s.add_argument("-q", "--quiet", action="store_true")
    _add_aid_args(s)
    _add_scale_args(s)
    from .search import VARIANTS

    v = s.add_argument_group("variants (qsens only; the same output files; README 'Search variants')")
    v.add_argument("--variant", default="sensitive", choices=("sensitive",) + VARIANTS,
                   help="sensitive: TPU-MLIR's run_sensitive_layer (default); auto_n: greedy exact forward selection; "
                   "auto_n_ordered: leave-one-in order + exact checks; neighbour: producer/consumer units; "
                   "leave_one_out; grad_screen: straight-through gradient scores + exact top-K; threshold_grid / "
                   "threshold_optax: new thresholds, then float layers; cost_aware: Pareto front over float MACs")
    v.add_argument("--unit_len", type=int, default=2, help="neighbour: longest producer->consumer chain (default 2)")
    v.add_argument("--top_k", type=int, default=10, help="grad_screen: ops scored exactly (default 10)")
    v.add_argument("--score", choices=("taylor", "fisher", "taylor_requant", "fisher_requant"), default="taylor",
                   help="grad_screen's ranking score (README 'Search variants')")
    v.add_argument("--grid_size", type=int, default=16,
                   help="threshold_grid: thresholds per op between the 99.9th percentile of |x| and the max")
    v.add_argument("--optax_steps", type=int, default=50, help="threshold_optax: Adam steps (default 50)")
    v.add_argument("--optax_lr", type=float, default=0.02, help="threshold_optax: learning rate on log thresholds")
    v.add_argument("--float_budget_macs", type=float, default=0.1,
                   help="cost_aware: float MACs allowed per image (a fraction of the model's when <= 1; default 0.1)")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("qtable", help="greedy mix-precision search like run_qtable.py (writes a qtable)")
    _add_model_args(s)
    _add_data_args(s, input_num=10, labels=True)
    s.add_argument("--calibration_table", default=None, help="the table to search with (required, as in run_qtable.py)")
    s.add_argument("--expected_cos", type=float, default=0.99,
                   help="stop when the mixed model reaches it (TPU-MLIR scale 0.5+0.5*cos)")
    s.add_argument("--min_layer_cos", type=float, default=0.99,
                   help="an op whose INT8 output (with the error accumulated before it) is below this goes float")
    s.add_argument("--global_compare_layers", default=None, help="'a,b' or 'a:0.3,b:0.7' (canonical tensor names)")
    s.add_argument("--chip", "--processor", dest="chip", default="bm1684")
    s.add_argument("--fp_type", default="auto", help="float type of the float layers (and of the reference model): "
                   "auto = TPU-MLIR's FLOAT_MAP (F32 on BM1684, F16 on BM1684X), F16 or F32 where the chip mixes them")
    s.add_argument("--debug_cmd", default="", help=_DEBUG_CMD_HELP["qtable"])
    s.add_argument("--loss_table", default="full_loss_table.txt", help="layer cos table (relative: inside --out_dir)")
    s.add_argument("-o", "--quantize_table", default="qtable", help="qtable path (relative: inside --out_dir)")
    s.add_argument("--out_dir", default=".")
    s.add_argument("--post_process", default=None,
                   help="python file defining PostProcess(outputs_dict) (MixPrecSearcher's, as run_sensitive_layer.py)")
    s.add_argument("--resume", action="store_true", help="continue from <out_dir>/qtable.ckpt.json")
    s.add_argument("--checkpoint_every_s", type=float, default=10.0,
                   help="seconds between checkpoints (also after every float step; 0 = after every op)")
    s.add_argument("--batch", type=int, default=10, help="images per compiled batch (memory; default 10)")
    s.add_argument("-q", "--quiet", action="store_true")
    _add_scale_args(s)
    s.set_defaults(fn=cmd_qtable)

    s = sub.add_parser("report", help="one self-contained report.html (plots, op table, thresholds) for a search run")
    s.add_argument("run_dir", help="the --out_dir of a qsens search (any --variant) or qsens qtable run")
    s.add_argument("-o", "--output", default=None, help="the HTML file to write (default RUN_DIR/report.html)")
    s.add_argument("--calibration_table", default=None,
                   help="the base table the search was given, for the old-vs-new threshold table "
                   "(default RUN_DIR/cali_table, which qsens writes when it calibrates)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("demo", help="build the zoo, then calibrate + search EfficientNet-Lite0 on images100")
    s.add_argument("--out_dir", default="qsens_demo")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(fn=cmd_demo)

    from . import interop  # names, compare, run: interoperability with a user's TPU-MLIR

    interop.register(sub)
    return p


def logging_setup() -> None:
    import logging

    if not logging.getLogger("qsens").handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("qsens: %(levelname)s: %(message)s".replace("%(levelname)s", "warning")))
        h.setLevel(logging.WARNING)
        logging.getLogger("qsens").addHandler(h)
        logging.getLogger("qsens").propagate = False


def main(argv=None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    # qsens logs its own warnings (one line each); don't repeat them as Python warnings with source lines
    warnings.filterwarnings("ignore", category=UserWarning, module=r"qsens\..*")
    logging_setup()
    t0 = time.time()
    try:
        setup_scale(args)
        rc = args.fn(args)
    except QsensError as e:
        if os.environ.get("QSENS_DEBUG"):
            raise
        print(f"qsens: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("qsens: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `qsens ops model.onnx | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0
    if os.environ.get("QSENS_DEBUG"):
        print(f"[{time.time() - t0:.1f} s]", file=sys.stderr)
    return rc


def entry() -> None:
    """The ``qsens`` command and ``python -m qsens``: :func:`main`, then the process ends without tearing the
    interpreter down (JAX's backend, XLA's thread pools, every cached array freed one by one: 0.3 s of a 7 s
    ``qsens calibrate`` on Lite0, measured), once the output streams and log files are flushed.  Everything qsens
    writes is written and closed by then (files are written whole and renamed).  A multi-process run, or a process
    that never imported qsens's devices module, exits the ordinary way."""
    rc = main()
    dev = sys.modules.get("qsens.devices")
    if dev is None or dev.distributed():
        sys.exit(rc)
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc if isinstance(rc, int) else 1 if rc else 0)


if __name__ == "__main__":
    entry()
