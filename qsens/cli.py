"""``qsens`` command line.  Strings are parsed here; algorithms live in the library.

Errors a user can cause print ``qsens: error: <one line>`` and exit 2 (no traceback; ``QSENS_DEBUG=1``
shows one).  Verbs: ``zoo``, ``ops``, ``check``, ``calibrate``, ``search``, ``demo``.
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


def _add_data_args(p: argparse.ArgumentParser, *, input_num: int = 0) -> None:
    from .data.preprocess import parse_dims, parse_floats

    g = p.add_argument_group("dataset and preprocessing (TPU-MLIR flags)")
    g.add_argument("--dataset", help="directory of images (jpg/jpeg/png/bmp/jfif) or .npy/.npz samples, searched recursively")
    g.add_argument("--data_list", help="file with one sample path per line (overrides --dataset)")
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


def load_model_from_args(args):
    from .onnx import to_jax

    fn, params = to_jax(args.model, args.input_shapes, name_style=args.name_style)
    return fn, params


def preprocess_from_args(args, graph):
    from .pipeline import make_preprocess, preset_for_model

    preset = args.preset if args.preset is not None else preset_for_model(args.model)
    return make_preprocess(graph, preset=preset, resize_dims=args.resize_dims, keep_aspect_ratio=args.keep_aspect_ratio,
                           pixel_format=args.pixel_format, channel_format=args.channel_format,
                           mean=args.mean, scale=args.scale, keep_ratio_mode=args.keep_ratio_mode,
                           pad_type=args.pad_type, pad_value=args.pad_value)


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
    from .calibrate import calibrate, parse_method, write_tables
    from .engine import enable_compilation_cache

    enable_compilation_cache()
    fn, params = load_model_from_args(args)
    g = fn.graph
    files = select_from_args(args)
    pp = preprocess_from_args(args, g)
    main_method = parse_method(args.cali_method)
    methods = [main_method] + [parse_method(m) for m in (args.methods.split(",") if args.methods else []) if parse_method(m) != main_method]
    t0 = time.time()
    cal = calibrate(fn.model, files, pp, methods=methods, hist=args.hist, tune_num=args.tune_num, batch=args.batch,
                    progress=not args.quiet)
    written = write_tables(cal, args.calibration_table, main_method=main_method, mlir=args.model,
                           write_method_tables=bool(args.methods))
    print(f"calibrated {len(cal.tensors)} tensors on {cal.n_samples} samples ({args.hist} histograms, "
          f"tune_num {cal.tune_num}) in {time.time() - t0:.1f} s; wrote {', '.join(written)}")
    return 0


def load_post_process(path: str | None):
    if not path:
        return None
    import importlib.util

    from .errors import SearchError

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
    from .errors import SearchError

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
    from .errors import SearchError

    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".qsens-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as e:
        raise SearchError(f"--out_dir '{path}' is not writable ({e.strerror}); choose another directory") from None
    return path


def run_search_from_args(args) -> int:
    from .calibrate import SENSITIVE_NAMES, calibrate, write_tables
    from .data.dataset import select_files
    from .engine import CompileStats, enable_compilation_cache
    from .errors import SearchError
    from .pipeline import load_inputs
    from .search.run import SearchConfig, search
    from .tables import CaliTable, check_table_matches, read_cali_table

    t0 = time.time()
    enable_compilation_cache()
    out_dir = ensure_out_dir(args.out_dir)
    qpath = args.quantize_table if os.path.isabs(args.quantize_table) else os.path.join(out_dir, args.quantize_table)
    ensure_out_dir(os.path.dirname(os.path.abspath(qpath)))
    post = load_post_process(args.post_process)
    compare, cweights = parse_compare_layers(args.global_compare_layers)
    cfg = SearchConfig(methods=tuple(args.methods.split(",")), max_float_layers=args.max_float_layers,
                       expected_cos=args.expected_cos, strategy=args.strategy, method_batch=args.method_batch,
                       compare_layers=compare, compare_weights=cweights, chip=args.chip)
    fn, params = load_model_from_args(args)
    g = fn.graph
    if compare:
        unknown = [c for c in compare if c not in g.tensors]
        if unknown:
            raise SearchError(f"--global_compare_layers names {unknown} which are not canonical tensors of the model (see `qsens ops`)")
    dataset = args.dataset if (args.dataset or args.data_list) else None
    cal_files = select_files(dataset=dataset, data_list=args.data_list, input_num=args.input_num, seed=args.seed)
    pool = select_files(dataset=dataset, data_list=args.data_list, input_num=0, seed=args.seed)
    if args.inference_num > len(pool):
        raise SearchError(f"--inference_num {args.inference_num} but only {len(pool)} samples are available in "
                          f"{args.dataset or args.data_list}; lower --inference_num or add images")
    inf_files = pool[: args.inference_num]
    pp = preprocess_from_args(args, g)
    stats = CompileStats()
    base = None
    if args.calibration_table:
        base = read_cali_table(args.calibration_table)
        check_table_matches(base, g.tensors, args.calibration_table)
    t_cal = time.time()
    # TPU-MLIR's flow: run_calibration (v2 statistics, KL tuned) gives the base table, run_sensitive_layer then
    # generates its per-method tables with the v1 statistics (checked against 1.23: tests/test_tpu_mlir_oracle.py)
    cal = calibrate(fn.model, cal_files, pp, methods=cfg.methods, hist=args.hist, tune_num=args.tune_num,
                    tune_methods=cfg.methods, progress=not args.quiet,
                    stats=stats, batch=args.batch)  # the search's chunk: both share the compiled executables
    base_cal = None
    if base is None:
        base_cal = calibrate(fn.model, cal_files, pp, methods=("kl",), hist="v2", tune_num=args.tune_num,
                             progress=not args.quiet, stats=stats, batch=args.batch)
    t_cal = time.time() - t_cal
    if args.tune_num <= 0:
        print("note: --tune_num 0: untuned method thresholds (TPU-MLIR's SL-old would crash here)", file=sys.stderr)
    cali_path = os.path.join(out_dir, "cali_table")
    if base is None:  # the table qsens writes to <out_dir>/cali_table, headers included
        from .tables import cali_header_lines

        base = CaliTable(base_cal.table_entries("kl", True), headers=tuple(cali_header_lines(
            method="kl", mlir=args.model, histogram_bins=2048, sample_number=base_cal.n_samples,
            tune_number=base_cal.tune_num, version_style="kld-mid")))  # run_calibration 1.23's header
    inputs = load_inputs(inf_files, g, pp)

    def extra_files():  # run_sensitive_layer always writes its per-method tables; the base only if qsens made it
        base_files = [] if base_cal is None else write_tables(base_cal, cali_path, main_method="kl", mlir=args.model,
                                                              write_method_tables=False)
        return {"calibration_tables": base_files + write_tables(cal, cali_path, main_method=None, mlir=args.model,
                                                                method_names=SENSITIVE_NAMES)}

    post_id = None
    if args.post_process:
        import hashlib

        with open(args.post_process, "rb") as f:
            post_id = hashlib.sha256(f.read()).hexdigest()
    from .zoo import labels_if_known

    res = search(fn.model, base, cal.tuned, inputs, cfg, out_dir=out_dir, qtable_path=args.quantize_table, chunk=args.batch,
                 labels=labels_if_known(inf_files),
                 resume=args.resume, post_process=post, progress=not args.quiet, extra_files=extra_files, stats=stats,
                 post_process_id=post_id)
    if res.early_exit:
        return 0
    s = res.summary
    print(">>>run result:")
    print(f"int8 outputs_cos:{s['int8']['similarity']:.6f} old")
    print(f"mix model outputs_cos:{s['mix_new_table']['similarity']:.6f}")
    print(f"  (plain cosine: INT8 {s['int8']['cosine']:.6f}, MIX original table {s['mix_original_table']['cosine']:.6f}, "
          f"MIX new table {s['mix_new_table']['cosine']:.6f}; similarity = 0.5+0.5*cos)")
    if "top1_agreement" in s["int8"]:
        print(f"  top-1 agreement with FP32 on {s['n_images']} images: INT8 {s['int8']['top1_agreement']:.3f}, "
              f"MIX original table {s['mix_original_table']['top1_agreement']:.3f}, MIX new table {s['mix_new_table']['top1_agreement']:.3f}")
    if "labelled" in s:
        lab = s["labelled"]
        print(f"  labelled images ({lab['fp32']['n']}): top-1 / top-5 FP32 {lab['fp32']['top1']:.3f} / {lab['fp32']['top5']:.3f}, "
              f"INT8 {lab['int8']['top1']:.3f} / {lab['int8']['top5']:.3f}, MIX new table "
              f"{lab['mix_new_table']['top1']:.3f} / {lab['mix_new_table']['top5']:.3f}")
    if s.get("f32_ops"):
        print("  ops BM1684 keeps in F32 inside the INT8 model: " + "; ".join(f"{k} ({v})" for k, v in s["f32_ops"].items()))
    print(f"float layers ({len(res.float_layers)}): {', '.join(res.float_layers)}")
    print(f"Output mix quantization table to {res.files['qtable']}")
    print(f"total time:{time.time() - t0}  (calibration {t_cal:.1f} s, search {res.timings['search_s']:.1f} s, "
          f"{res.evaluated_ops} ops evaluated, XLA compile {stats.compile_s:.1f} s for {stats.traces} executables)")
    print("success sensitive layer search")
    return 0


def cmd_search(args) -> int:
    return run_search_from_args(args)


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
    s.set_defaults(fn=cmd_ops)

    s = sub.add_parser("check", help="compare the converted model with onnxruntime on real samples")
    _add_model_args(s)
    _add_data_args(s, input_num=8)
    s.add_argument("--tol", type=float, default=1e-4, help="max relative error allowed (default 1e-4)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("calibrate", help="calibration table(s) like run_calibration.py (streaming, all methods in one pass)")
    _add_model_args(s)
    _add_data_args(s, input_num=0)
    s.add_argument("--cali_method", default="kl", help="kl (default, tuned), max, percentile9999 or mse")
    s.add_argument("--methods", default="", help="also write <table>_<m>.1 and <table>_<m>_tune for these methods, "
                   "e.g. max,percentile9999,kl (what the sensitive-layer search uses)")
    s.add_argument("--tune_num", type=int, default=5, help="SimpleTuner samples (0 = untuned thresholds)")
    s.add_argument("--hist", choices=("v1", "v2"), default="v2",
                   help="v2 (default, TPU-MLIR 1.23 run_calibration): one pass, streaming histogram merge; "
                   "v1: abs-max pass then one histogram width, percentile of |a| (what run_sensitive_layer's "
                   "per-method tables use)")
    s.add_argument("--batch", type=int, default=None, help="images per compiled batch (default min(10, input_num))")
    s.add_argument("-o", "--calibration_table", default="cali_table", help="output table path")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("search", help="sensitive-layer search like run_sensitive_layer.py (writes a qtable)")
    _add_model_args(s)
    _add_data_args(s, input_num=10)
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
    s.add_argument("--hist", choices=("v1", "v2"), default="v1",
                   help="statistics of the per-method candidate tables (TPU-MLIR 1.23's run_sensitive_layer: v1); "
                   "the base table qsens calibrates without --calibration_table is run_calibration's (v2)")
    s.add_argument("--out_dir", default=".")
    s.add_argument("--resume", action="store_true", help="continue from <out_dir>/search.ckpt.json")
    s.add_argument("--strategy", choices=("fast", "naive"), default="fast")
    s.add_argument("--batch", type=int, default=10, help="images per compiled batch (memory; default 10)")
    s.add_argument("--method_batch", choices=("loop", "concat"), default="loop",
                   help="fast strategy: suffixes of the candidates one after another (loop) or stacked (concat)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("demo", help="build the zoo, then calibrate + search EfficientNet-Lite0 on images100")
    s.add_argument("--out_dir", default="qsens_demo")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(fn=cmd_demo)

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


if __name__ == "__main__":
    sys.exit(main())
