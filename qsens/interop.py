"""Interoperability with a user's own TPU-MLIR run: ``qsens names``, ``qsens compare``, ``qsens run``.

* ``qsens names model.onnx --mlir model.mlir [--write-map names.json]``: qsens's canonical op names against the op
  names of the user's ``model_transform.py`` output (:mod:`qsens.onnx.mlir_names`); ``--names_map names.json`` on
  every other verb makes qsens use the user's names in every table, qtable and dump it writes.
* ``qsens compare a.npz b.npz``: TPU-MLIR's ``npz_tool.py compare`` (1.23: ``numpy_helper/npz_compare.py`` +
  ``numpy_helper/tensor_compare.py``): same verdicts, similarities, tolerances, output lines and summary.
* ``qsens run model.onnx ... --dump out.npz [--int8 --calibration_table T [--quantize_table Q]]``: every tensor of
  the float model or of qsens's BM1684 INT8 simulation, keyed by tensor name, NCHW as in the model, dequantized
  floats like ``model_runner.py --dump_all_tensors`` (``--codes`` adds the integer codes).

CLI glue: strings are parsed here, the numerics live in the library (the INT8 model is
:class:`qsens.quant.mixed.MixedModel`, the same code the oracle tests check bit for bit against TPU-MLIR).
"""

from __future__ import annotations

import logging
import math
import os
import sys

import numpy as np

from .errors import QsensError

log = logging.getLogger("qsens")

# ================================================================================================ compare
#: TPU-MLIR's verdicts (``TensorCompare``; NOT_SIMILAR prints as TPU-MLIR spells it)
EQUAL, NOT_EQUAL, CLOSE, SIMILAR, NOT_SIMILAR, NOT_MATCH = "EQUAL", "NOT_EQUAL", "CLOSE", "SIMILAR", "NOT_SIMLIAR", "NOT_MATCH"
PASSING = (EQUAL, CLOSE, SIMILAR)
#: ``npz_tool.py compare --tolerance`` default (cosine, euclidean similarity); ``close_order_tol`` 3; the SQNR bound
#: npz_compare passes is -inf (reported, never a criterion)
DEFAULT_TOLERANCE = "0.99,0.99"
CLOSE_ORDER = 3


def parse_tolerance(s: str) -> tuple[float, float]:
    parts = [p.strip() for p in str(s).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 2 or not all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in vals):
        raise QsensError(f"--tolerance must be 'cos,euclid' with two numbers in [-1, 1] (TPU-MLIR's default "
                         f"{DEFAULT_TOLERANCE}), got {s!r}")
    return vals[0], vals[1]


def _bf16_to_f32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def align(d1: np.ndarray, d2: np.ndarray):
    """TPU-MLIR's ``align_type_and_shape``: ``d2`` in ``d1``'s shape (or both cropped to the smaller shape of the
    same rank), then both in int8 if either is int8, int32 if either is int32, else float32 (uint16 = bf16).
    Returns ``(d1, d2, warning)``; raises ValueError when the shapes cannot be aligned."""
    warning = None
    try:
        d2 = d2.reshape(d1.shape)
    except ValueError:
        warning = f"not the same shape  {d1.shape} v.s. {d2.shape}"
        s1, s2 = np.array(d1.shape), np.array(d2.shape)
        if s1.size == s2.size and (np.all(s1 >= s2) or np.all(s1 <= s2)):
            if np.all(s1 >= s2):
                d1 = d1[tuple(slice(0, n) for n in d2.shape)]
            else:
                d2 = d2[tuple(slice(0, n) for n in d1.shape)]
        else:
            raise ValueError(warning) from None
    t1, t2 = d1.dtype, d2.dtype
    t = np.int8 if np.int8 in (t1, t2) else np.int32 if np.int32 in (t1, t2) else np.float32
    if t1 == np.uint16:
        d1 = _bf16_to_f32(d1)
    if t2 == np.uint16:
        d2 = _bf16_to_f32(d2)
    return d1.astype(t), d2.astype(t), warning


def _sqnr(raw: np.ndarray, dequant: np.ndarray):
    """TPU-MLIR's ``sqnr_similarity``: 10·log10 of the zero-mean energies of ``raw`` (the *target*, first file)
    and of the noise ``raw - dequant``; inf when either is zero."""
    raw, dequant = raw.ravel(), dequant.ravel()
    noise = raw - dequant

    def centred_energy(x):  # the mean in float64, subtracted in the array's type (numpy 1.x scalar casting)
        mean = np.float64(np.sum(x)) / x.size
        return np.sum(np.square(x - np.asarray(mean).astype(x.dtype if x.dtype.kind == "f" else np.float64)))

    var_raw, var_noise = centred_energy(raw), centred_energy(noise)
    if var_noise == 0 or var_raw == 0:
        return float("inf")
    return 10 * np.float64(np.log10(var_raw / var_noise))


def _similarities(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.copy(), b.copy()
    for x in (a, b):
        for m, v in ((np.isnan(x), 0.0), (np.isposinf(x), 10000.0), (np.isneginf(x), -10000.0)):
            if m.any():
                x[m] = v
    if np.sum(np.abs(a)) != 0 and np.sum(np.abs(b) != 0):
        af, bf = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
        ratio = np.float64(np.dot(af, bf) / (np.linalg.norm(af) * np.linalg.norm(bf)))  # float32, then float64
        cos = 1 - (1 - ratio)
    else:
        cos = 0.0
    ed = math.sqrt(np.sum(np.power(a - b, 2)))
    sr = math.sqrt(np.sum(np.power((a + b) / 2, 2))) + 1e-7
    euclid = 0.0 if (math.isinf(ed) or math.isinf(sr)) else 1 - ed / sr
    return {"cosine": cos, "euclid": euclid, "sqnr": _sqnr(a, b)}


def compare_arrays(d1: np.ndarray, d2: np.ndarray, tol: tuple[float, float], *, int8_close: bool = True,
                   per_axis: int = -1) -> tuple[bool, str, int, dict]:
    """TPU-MLIR's ``TensorCompare.compare`` on aligned arrays: ``(passed, verdict, channel, similarities)``.

    EQUAL: bit-identical. NOT_EQUAL: int8 tensors that differ (no closeness for int8). CLOSE: ``allclose`` with
    ``rtol = 1e-3`` or tighter (``close_order`` = the tightest of 1e-5..1e-3 that holds), ``atol = 1e-8``.
    Otherwise SIMILAR if cosine > tol[0] and Euclidean similarity > tol[1], else NOT_SIMILAR; with ``per_axis``
    the channels along that axis are compared one by one and the failing one of lowest cosine is reported."""
    if d1.size != d2.size:
        return False, NOT_MATCH, 0, {}
    if np.array_equal(d1, d2):
        return True, EQUAL, 0, {}
    if d1.dtype == np.int8 and int8_close:
        return False, NOT_EQUAL, 0, {}
    if 0 <= per_axis < d1.ndim:
        outer = int(np.prod(d1.shape[: per_axis + 1]))
    else:
        outer = 1
    inner = d1.size // outer
    f1, f2 = d1.ravel(), d2.ravel()
    results = []
    for c in range(outer):
        a, b = f1[c * inner : (c + 1) * inner], f2[c * inner : (c + 1) * inner]
        order = 2
        for o in range(CLOSE_ORDER + 2, 1, -1):
            order = o
            if np.allclose(a, b, rtol=10.0 ** (-o), atol=1e-8, equal_nan=True):
                break
        if order >= CLOSE_ORDER:
            results.append((True, CLOSE, 0, {"close_order": order}))
            continue
        s = _similarities(a, b)
        ok = s["cosine"] > tol[0] and s["euclid"] > tol[1] and s["sqnr"] > float("-inf")
        results.append((ok, SIMILAR if ok else NOT_SIMILAR, c, s))
    res, min_cos = results[-1], 1.0
    for r in results:
        if not r[0] and r[3]["cosine"] < min_cos:
            res, min_cos = r, r[3]["cosine"]
    return res


def _int8_stats(d: np.ndarray) -> list[str]:
    q = d.astype(np.int8)
    n = q.size
    rows = [("pos(x=127)   ", np.sum(q == 127)), ("neg(x=-128)  ", np.sum(q == -128)), ("zeros(x=0)   ", np.sum(q == 0)),
            ("low(abs(x)<8)", np.sum(np.abs(q) <= 8))]
    return [f"    {k} = {v / n:.4f}  [{v}/{n}]" for k, v in rows]


def compare_npz(target: str, reference: str, *, tolerance: str = DEFAULT_TOLERANCE, excepts: str = "", key: str = "",
                verbose: int = 0, per_axis: int = -1, int8_close: int = 1, forall: bool = False, save: str | None = None,
                out=None) -> dict:
    """``npz_tool.py compare target reference``: prints TPU-MLIR's lines to ``out``; returns the summary."""
    out = out or sys.stdout
    tol = parse_tolerance(tolerance)
    z1, z2 = _load_npz(target), _load_npz(reference)
    skip = {s for s in excepts.split(",") if s} if excepts else set()
    if key:
        if key not in z1.files or key not in z2.files:
            raise QsensError(f"--key {key!r} is not in both '{target}' and '{reference}'")
        names = [key]
    else:
        names = [n for n in z2.files if n in z1.files and n not in skip]
    if not names:
        raise QsensError(f"'{target}' and '{reference}' share no tensor name; nothing to compare (dump both with the "
                         "same names: qsens run --names_map, or check --excepts)")
    todo = list(names)
    if not forall and len(todo) > 200:  # TPU-MLIR samples every step-th tensor (and the last), unless --forall
        step = len(todo) // 200
        if step > 1:
            todo = todo[::step]
            if names[-1] not in todo:
                todo.append(names[-1])
    results, lines = {}, []
    for n in todo:
        a, b = z1[n], z2[n]
        try:
            a2, b2, warn = align(a, b)
            if warn:
                lines.append(f"WARRING: {warn}")
        except ValueError:
            lines.append(f"Error: {n} in two npz file is not same shape. {a.shape} v.s. {b.shape}")
            results[n] = (False, NOT_MATCH, 0, {})
            continue
        results[n] = compare_arrays(a2, b2, tol, int8_close=bool(int8_close), per_axis=per_axis)
    print("\n".join(lines + ["\n"]), file=out)
    count = dict.fromkeys((EQUAL, NOT_EQUAL, CLOSE, SIMILAR, NOT_SIMILAR, NOT_MATCH), 0)
    mins = [1.0, 1.0, float("inf")]
    ordered = [n for n in names if n in results]
    for n in ordered:
        ok, verdict, ch, s = results[n]
        count[verdict] += 1
        if verdict in (SIMILAR, NOT_SIMILAR):
            mins = [min(mins[0], s["cosine"]), min(mins[1], s["euclid"]), min(mins[2], s["sqnr"])]
        d1 = z1[n]
        print("[{:<32}] {:>12} [{:>6}]".format(n, verdict, "PASSED" if ok else "FAILED"), file=out)
        if verbose > 0:
            print(f"    {d1.shape} {d1.dtype} ", file=out)
            if verdict == CLOSE:
                print(f"    close order            = {s['close_order']}", file=out)
            if verdict in (SIMILAR, NOT_SIMILAR):
                if 0 <= per_axis < d1.ndim:
                    print(f"    channel {ch} on axis {per_axis} :", file=out)
                print(f"    cosine_similarity      = {s['cosine']:.6f}", file=out)
                print(f"    euclidean_similarity   = {s['euclid']:.6f}", file=out)
                print(f"    sqnr_similarity        = {s['sqnr']:.6f}", file=out)
        if d1.dtype == np.int8:
            print("\n".join(_int8_stats(d1)), file=out)
    passed = sum(results[n][0] for n in ordered)
    failed = len(ordered) - passed
    print(f"{len(ordered)} compared", file=out)
    print(f"{passed} passed", file=out)
    print(f"  {count[EQUAL]} equal, {count[CLOSE]} close, {count[SIMILAR]} similar", file=out)
    print(f"{failed} failed", file=out)
    print(f"  {count[NOT_EQUAL]} not equal, {count[NOT_SIMILAR]} not similar", file=out)
    print(f"min_similiarity = ({mins[0]}, {mins[1]}, {mins[2]})", file=out)
    if save:
        _save_csv(save, ordered, results)
        print(f"Results saved as {save}", file=out)
    print(f"Target    {target}", file=out)
    print(f"Reference {reference}", file=out)
    print(f"npz compare {'PASSED' if failed == 0 else 'FAILED'}.", file=out)
    return {"compared": len(ordered), "passed": passed, "failed": failed, "count": count,
            "results": {n: results[n] for n in ordered}, "min_similarity": tuple(mins)}


def _save_csv(path: str, names, results) -> None:
    try:
        with open(path, "w", newline="") as f:
            f.write("name, op, quant, pass, sim_cos, sim_euc, sqnr\n")
            for n in names:
                ok, verdict, _, s = results[n]
                has = verdict in (SIMILAR, NOT_SIMILAR)
                cos = float(s["cosine"]) if has else 1.0
                euc = float(s["euclid"]) if has else 1.0
                sq = float(s["sqnr"]) if has else float("inf")
                f.write(f"{n}, -, -, {verdict in PASSING}, {cos}, {euc}, {sq}\n")
    except OSError as e:
        raise QsensError(f"cannot write --save '{path}' ({e.strerror}); choose a writable path") from None


def _load_npz(path: str):
    if not os.path.isfile(path):
        raise QsensError(f"npz file '{path}' does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise QsensError(f"'{path}' is not a readable .npz file ({type(e).__name__}: {e})") from None


def _int_flag(name: str, value: str, allowed: str, ok) -> int:
    try:
        v = int(value)
    except ValueError:
        v = None
    if v is None or not ok(v):
        raise QsensError(f"{name} must be {allowed}, got {value!r}")
    return v


def cmd_compare(args) -> int:
    axis = _int_flag("--per_axis_compare", args.per_axis_compare, "-1 (whole tensors) or an axis >= 0", lambda v: v >= -1)
    close = _int_flag("--int8_tensor_close", args.int8_tensor_close, "1 (int8 tensors must be equal) or 0", lambda v: v in (0, 1))
    s = compare_npz(args.target_file, args.ref_file, tolerance=args.tolerance, excepts=args.excepts or "",
                    key=args.key, verbose=args.verbose, per_axis=axis, int8_close=close, forall=args.forall,
                    save=args.save)
    return 0 if s["failed"] == 0 else 1


# ================================================================================================ names
def name_table(mapping, *, quiet_same: bool = False) -> list[str]:
    lines = [f"{'idx':>4}  {'qsens name':<48} {'TPU-MLIR name':<48} {'type':<10} status"]
    for i, r in enumerate(mapping.rows):
        if quiet_same and r.status == "same":
            continue
        lines.append(f"{i:>4}  {r.qsens or '-':<48} {r.mlir or '-':<48} {r.type:<10} {r.status}")
    return lines


def cmd_names(args) -> int:
    from .cli import load_model_from_args
    from .onnx.mlir_names import MlirError, map_names, parse_top_mlir, write_names_map

    mlir = parse_top_mlir(args.mlir)
    fn, _ = load_model_from_args(args)
    g = fn.graph
    mapping = map_names(g, mlir)
    n_q = len(g.ops)
    if not any(r.status in ("same", "renamed") and r.type != "Input" for r in mapping.rows):
        raise MlirError(f"none of the {n_q} ops of '{args.model}' maps onto the {len(mlir.ops)} ops of '{args.mlir}'; "
                        "is the .mlir model_transform.py's output for this model?")
    print(f"# {args.model} ({n_q} canonical ops) -> {args.mlir} ({len(mlir.ops)} Top ops, {mlir.state or 'state ?'}): "
          f"{mapping.count('same')} same, {mapping.count('renamed')} renamed, {mapping.count('unmapped')} unmapped, "
          f"{mapping.count('mlir_only')} only in the MLIR")
    print("\n".join(name_table(mapping, quiet_same=args.changed_only)))
    for r in mapping.unmapped:
        log.warning(f"op {r.qsens} ({r.type}) has no counterpart in '{args.mlir}': tables and qtables keep qsens's "
                    "name for it, which TPU-MLIR will not find")
    only = [r.mlir for r in mapping.rows if r.status == "mlir_only"]
    if only:
        log.warning(f"{len(only)} op(s) of '{args.mlir}' have no qsens op, e.g. {only[:3]}")
    if args.write_map:
        write_names_map(args.write_map, mapping, model=args.model, mlir=args.mlir, name_style=args.name_style)
        print(f"wrote {args.write_map} ({len(mapping.tensor_map)} names; use it as --names_map on calibrate, "
              "search, qtable, run)")
    return 0


# ================================================================================================ run
def _parse_inputs_npz(path: str, graph) -> dict[str, np.ndarray]:
    z = _load_npz(path)
    keys = list(z.files)
    if all(n in keys for n in graph.inputs):
        arrs = {n: np.asarray(z[n]) for n in graph.inputs}
    elif len(graph.inputs) == 1 and len(keys) == 1:
        arrs = {graph.inputs[0]: np.asarray(z[keys[0]])}
    else:
        raise QsensError(f"--input '{path}' holds {keys[:5]}, the model takes inputs {list(graph.inputs)}; save one "
                         "array per input name (TPU-MLIR's <model>_in_f32.npz does)")
    for (n, a), shp in zip(arrs.items(), graph.input_shapes):
        if a.ndim == len(shp) - 1:
            arrs[n] = a[None]
        elif a.ndim != len(shp) or tuple(a.shape[1:]) != tuple(shp[1:]):
            raise QsensError(f"--input '{path}': input '{n}' has shape {list(a.shape)}, the model expects "
                             f"{list(shp)} (any leading batch)")
    return arrs


def float_mask(graph, quantize_table: str | None) -> np.ndarray:
    """One INT8 bit per canonical op: False for the ops a qtable sets to a float mode."""
    mask = np.ones(len(graph.ops), bool)
    if not quantize_table:
        return mask
    from .errors import TableError
    from .tables import read_qtable

    names = set(graph.op_names)
    for name, mode in read_qtable(quantize_table).ops:
        if name not in names:
            raise TableError(f"--quantize_table '{quantize_table}': op {name!r} is not an op of the model (see "
                             "`qsens ops MODEL`; TPU-MLIR names: --names_map)")
        if mode != "INT8":
            mask[graph.index(name)] = False
    return mask


def run_dump(args) -> dict[str, np.ndarray]:
    """Every canonical tensor of the float (or INT8) model on the selected samples, one deployment batch at a time."""
    import jax

    from .cli import load_model_from_args, preprocess_from_args, select_from_args
    from .engine import enable_compilation_cache

    enable_compilation_cache()
    fn, params = load_model_from_args(args)
    model, g = fn.model, fn.graph
    if args.input:
        inputs = _parse_inputs_npz(args.input, g)
    else:
        from .pipeline import load_inputs

        if not (args.dataset or args.data_list):
            raise QsensError("qsens run needs samples: --dataset DIR, --data_list FILE or --input inputs.npz")
        files = select_from_args(args)
        inputs = load_inputs(files, g, preprocess_from_args(args, g))
    n = len(next(iter(inputs.values())))
    b = g.batch
    if n % b:
        raise QsensError(f"{n} samples do not fill whole batches of {b} (the model's deployment batch); pass a "
                         f"multiple of {b} (--input_num)")
    taps = g.tensors
    if getattr(args, "asymmetric", False):
        return _run_dump_asymmetric(args, fn, params, inputs, b)
    if args.int8:
        if not args.calibration_table:
            raise QsensError("qsens run --int8 needs --calibration_table (run_calibration.py's or qsens calibrate's)")
        from .quant.chip import with_fp_type
        from .quant.kernels import quantize
        from .quant.mixed import MixedModel, plan_from_table, thresholds_from_table
        from .tables import read_cali_table

        table = read_cali_table(args.calibration_table)
        # the chip's lowering (F32 ops of the INT8 model, kernels) and its float layers' type (--fp_type: auto = F16 on
        # BM1684X, TPU-MLIR's FLOAT_MAP)
        plan = plan_from_table(g, table, with_fp_type(args.chip, getattr(args, "fp_type", "auto")))
        th = thresholds_from_table(g, table)
        mask = float_mask(g, args.quantize_table) & np.array([op.name not in plan.f32_reason for op in g.ops])
        mm = MixedModel(model, plan)
        # one jit-compiled program (eager op-by-op dispatch is ~6x slower on PNet); the same integer results
        int8_fn = jax.jit(lambda p, x, th_, m: mm.apply(p, x, th_, m, taps=taps)[1])

        def run(x):
            return int8_fn(params, x, th, mask)
    else:
        given = [f for f, v in (("--calibration_table", args.calibration_table), ("--quantize_table", args.quantize_table),
                                ("--codes", args.codes)) if v]
        if given:
            raise QsensError(f"{', '.join(given)} only apply with --int8 (the float model has no INT8 ops); add --int8")
        float_fn = jax.jit(lambda p, x: fn(p, x, taps=taps)[1])

        def run(x):
            return float_fn(params, x)

    parts = [run({k: v[i : i + b] for k, v in inputs.items()}) for i in range(0, n, b)]  # as TPU-MLIR: batch by batch
    dump = {t: np.concatenate([np.asarray(p[t]) for p in parts]).astype(np.float32, copy=False) for t in taps}
    for t, v in dump.items():
        if not np.all(np.isfinite(v)):
            log.warning(f"tensor {t} holds NaN/Inf values")
    if args.int8 and args.codes:
        eff = np.asarray(plan.effective(th))
        int8_set = {t for op in g.ops if mask[g.index(op.name)] and op.type != "Input" for t in op.outputs}
        for i, t in enumerate(g.tensors):
            if t in int8_set:
                s = plan.signed[t]
                q = np.asarray(quantize(dump[t], float(eff[i]), s))
                dump[f"{t}{args.codes_suffix}"] = q.astype(np.int8 if s else np.uint8)
    return dump


def _run_dump_asymmetric(args, fn, params, inputs, batch: int) -> dict[str, np.ndarray]:
    """``qsens run --int8 --asymmetric``: TPU-MLIR's asymmetric BM1684X INT8 model (``qsens.quant.asym``), batch by
    batch; INT8 tensors dequantized, ``(q - zp) * scale``, F16 ones as computed; ``--codes`` adds the codes."""
    if not args.int8:
        raise QsensError("--asymmetric is a kind of INT8 model: add --int8 (and --chip bm1684x)")
    if not args.calibration_table:
        raise QsensError("qsens run --int8 --asymmetric needs --calibration_table (its min / max columns set the zero points)")
    if args.quantize_table:
        raise QsensError("--asymmetric with --quantize_table is not modelled (TPU-MLIR's mixed asymmetric lowering was not "
                         "checked); drop one of them")
    from .quant.asym import AsymModel
    from .tables import read_cali_table

    am = AsymModel(fn.model, params, read_cali_table(args.calibration_table), args.chip, getattr(args, "fp_type", "auto"))
    n = len(next(iter(inputs.values())))
    vals, codes = [], []
    for i in range(0, n, batch):
        v, c = am.apply(params, {k: x[i : i + batch] for k, x in inputs.items()})
        vals.append(v)
        codes.append(c)
    dump = {t: np.concatenate([v[t] for v in vals]).astype(np.float32, copy=False) for t in vals[0]}
    if args.codes:
        for t, q in am.qinfo.items():
            dump[f"{t}{args.codes_suffix}"] = np.concatenate([c[t] for c in codes]).astype(np.int8 if q.signed else np.uint8)
    return dump


def cmd_run(args) -> int:
    dump = run_dump(args)
    try:
        d = os.path.dirname(os.path.abspath(args.dump))
        os.makedirs(d, exist_ok=True)
        np.savez(args.dump, **dump)
    except OSError as e:
        raise QsensError(f"cannot write --dump '{args.dump}' ({e.strerror}); choose a writable path") from None
    kind = ("asymmetric " if getattr(args, "asymmetric", False) else "") + "INT8 (dequantized)" if args.int8 else "float"
    first = next(iter(dump.values()))
    print(f"wrote {args.dump}: {len(dump)} tensors, {kind}, {first.shape[0]} sample(s)")
    return 0


# ================================================================================================ CLI
def register(sub) -> None:
    from .cli import _add_data_args, _add_model_args

    s = sub.add_parser("names", help="map qsens's op names onto your model_transform.py .mlir's (TPU-MLIR names)")
    _add_model_args(s)
    s.add_argument("--mlir", required=True, help="the Top-dialect .mlir model_transform.py wrote for this model")
    s.add_argument("--write-map", "--write_map", dest="write_map", metavar="FILE", default=None,
                   help="write qsens name -> TPU-MLIR name as JSON, for --names_map on calibrate/search/qtable/run")
    s.add_argument("--changed-only", "--changed_only", dest="changed_only", action="store_true",
                   help="list only the ops whose names differ (or cannot be mapped)")
    s.set_defaults(fn=cmd_names)

    s = sub.add_parser("compare", help="compare two npz dumps like TPU-MLIR's npz_tool.py compare")
    s.add_argument("target_file", help="the target npz (e.g. qsens run --dump)")
    s.add_argument("ref_file", help="the reference npz (e.g. model_runner.py --dump_all_tensors)")
    s.add_argument("--tolerance", default=DEFAULT_TOLERANCE,
                   help=f"cosine,euclidean similarity a tensor must exceed (default {DEFAULT_TOLERANCE}, as npz_tool)")
    s.add_argument("--excepts", default=None, help="comma-separated tensors not to compare")
    s.add_argument("-k", "--key", default="", help="compare only this tensor")
    s.add_argument("-v", "--verbose", action="count", default=0, help="-v: shapes and similarities")
    s.add_argument("--per_axis_compare", default="-1", help="compare channel by channel along this axis")
    s.add_argument("--int8_tensor_close", default="1",
                   help="1 (default): int8 tensors must be equal; 0: judge them by similarity")
    s.add_argument("-a", "--forall", action="store_true", help="compare every tensor (TPU-MLIR samples 200 of more)")
    s.add_argument("-s", "--save", default=None, help="also write the results as CSV")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("run", help="run the float or BM1684 INT8 model and dump every tensor (model_runner.py style)")
    _add_model_args(s)
    _add_data_args(s, input_num=1)
    s.add_argument("--input", default=None, metavar="NPZ",
                   help="preprocessed inputs (TPU-MLIR's <model>_in_f32.npz), instead of --dataset")
    s.add_argument("--int8", action="store_true", help="the BM1684 INT8 simulation (needs --calibration_table)")
    s.add_argument("--calibration_table", default=None, help="run_calibration.py's or qsens's table (with --int8)")
    s.add_argument("--quantize_table", default=None, help="qtable: its ops run float (with --int8; --fp_type)")
    s.add_argument("--chip", "--processor", dest="chip", default="bm1684")
    s.add_argument("--fp_type", default="auto", help="with --int8: the float type of the qtable's ops and the ops without "
                   "INT8 form: auto = TPU-MLIR's FLOAT_MAP (F32 on BM1684, F16 on BM1684X), F16 or F32")
    s.add_argument("--codes", action="store_true",
                   help="with --int8: also the integer codes of every INT8 tensor (int8/uint8) as '<tensor>_code'")
    s.add_argument("--asymmetric", action="store_true",
                   help="with --int8 --chip bm1684x: TPU-MLIR's asymmetric INT8 (model_deploy.py --asymmetric): zero "
                        "points from the table's min/max; modelled op kinds: Conv, MaxPool, Softmax, PRelu (F16)")
    s.add_argument("--dump", required=True, metavar="NPZ", help="the npz to write: one array per tensor, NCHW")
    s.set_defaults(fn=cmd_run, codes_suffix="_code")
