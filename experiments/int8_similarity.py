"""INT8 (BM1684, all ops INT8 that can be) vs FP32 similarity of a model.

Calibrates (default: EfficientNet-Lite0 from the zoo, 100 images of zoo/images100, MAX thresholds, untuned),
builds the INT8 model (``qsens.quant.mixed.MixedModel`` with an all-ones mask) and compares it with the float
model on the inference images (default: zoo/images).  Prints the similarity on both scales (TPU-MLIR's
0.5+0.5*cos and the plain cosine), top-1 agreement and the ops that stay F32 with the reason.

    python experiments/int8_similarity.py [--model M.onnx] [--cal_dataset DIR] [--input_num 100]
                                          [--method max] [--dataset DIR]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from qsens import metrics
from qsens.calibrate import calibrate, parse_method
from qsens.data.dataset import select_files
from qsens.onnx import to_jax
from qsens.pipeline import load_inputs, make_preprocess, preset_for_model
from qsens.quant import BM1684, qparams_for
from qsens.quant.mixed import PASS_THROUGH, MixedModel, plan_from_table, thresholds_from_table
from qsens.tables import CaliTable
from qsens.zoo import build_zoo


def dynamic_fallbacks(plan, params, th) -> dict[str, str]:
    """INT8-capable ops that BM1684 still lowers to F32 at these thresholds (e.g. Conv with rshift < 0)."""
    g, eff, idx = plan.graph, plan.effective(np.asarray(th, np.float32)), plan.tensor_index
    out = {}
    for op in g.ops:
        if op.type == "Input" or op.type in PASS_THROUGH or op.name in plan.f32_reason:
            continue
        qp = qparams_for(op, {r: params[k] for r, k in op.weights}, tuple(float(eff[idx[t]]) for t in op.inputs),
                         float(eff[idx[op.name]]), tuple(plan.signed[t] for t in op.inputs), plan.signed[op.name],
                         BM1684, [g.tensor_shape(t) for t in op.inputs])
        if bool(qp["fallback"]):
            out[op.name] = "threshold-dependent BM1684 fallback (e.g. Conv rshift < 0, Add/Mul multiplier out of range)"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="ONNX model (default: zoo efficientnet_lite0.onnx)")
    ap.add_argument("--cal_dataset", default=None, help="calibration images (default: zoo/images100)")
    ap.add_argument("--input_num", type=int, default=100, help="calibration images (default 100)")
    ap.add_argument("--method", default="max", help="threshold method: max (default), percentile9999, kl, mse")
    ap.add_argument("--tune_num", type=int, default=0, help="SimpleTuner samples (KL/MSE only; default 0)")
    ap.add_argument("--hist", choices=("v1", "v2"), default="v1")
    ap.add_argument("--dataset", default=None, help="inference images (default: zoo/images)")
    ap.add_argument("--inference_num", type=int, default=0, help="inference images, 0 = all")
    ap.add_argument("--preset", default=None, help="preprocessing preset (default: from the model file name)")
    args = ap.parse_args(argv)

    zoo = build_zoo(models=("efficientnet_lite0",), progress=False) if None in (args.model, args.cal_dataset,
                                                                               args.dataset) else None
    model = args.model or str(zoo / "efficientnet_lite0.onnx")
    cal_dir = args.cal_dataset or str(zoo / "images100")
    inf_dir = args.dataset or str(zoo / "images")
    method = parse_method(args.method)

    t0 = time.perf_counter()
    fn, params = to_jax(model)
    g = fn.graph
    pp = make_preprocess(g, preset=args.preset or preset_for_model(model))
    cal_files = select_files(dataset=cal_dir, input_num=args.input_num)
    cal = calibrate(fn.model, cal_files, pp, methods=(method,), hist=args.hist, tune_num=args.tune_num,
                    tune_methods=(method,), progress=False)
    table = CaliTable(cal.table_entries(method, True))
    plan = plan_from_table(g, table)
    th = thresholds_from_table(g, table)
    t1 = time.perf_counter()

    inf_files = select_files(dataset=inf_dir, input_num=args.inference_num)
    x = load_inputs(inf_files, g, pp)
    ref = {k: np.asarray(v) for k, v in jax.jit(fn)(params, x).items()}
    int8 = jax.jit(MixedModel(fn.model, plan).apply)(params, x, th, np.ones(len(g.ops), bool))
    int8 = {k: np.asarray(v) for k, v in int8.items()}
    t2 = time.perf_counter()

    sim = metrics.similarity(ref, int8)
    cos = metrics.plain_cosine(ref, int8)
    compute = [op for op in g.ops if op.type != "Input" and op.type not in PASS_THROUGH]
    f32 = dict(plan.f32_reason) | dynamic_fallbacks(plan, params, th)
    n_int8 = sum(op.name not in f32 for op in compute)
    types: dict[str, int] = {}
    for op in compute:
        types[op.type] = types.get(op.type, 0) + 1

    print(f"model: {model}")
    print(f"calibration: {method}{' (tuned)' if args.tune_num and method in ('kl', 'mse') else ''}, "
          f"{len(cal_files)} images of {cal_dir}, {args.hist} histograms ({t1 - t0:.1f} s)")
    print(f"inference: {len(inf_files)} images of {inf_dir} ({t2 - t1:.1f} s incl. compile)")
    print(f"ops: {len(g.ops)} canonical, {len(compute)} compute "
          f"({', '.join(f'{n} {t}' for t, n in sorted(types.items(), key=lambda kv: -kv[1]))}); "
          f"{n_int8} INT8, {len(compute) - n_int8} F32")
    for name, out in ref.items():
        print(f"output {name} {list(out.shape)}")
    print(f"similarity 0.5+0.5*cos (TPU-MLIR scale): mean {sim.mean():.6f}  min {sim.min():.6f}  max {sim.max():.6f}")
    print(f"plain cosine:                            mean {cos.mean():.6f}  min {cos.min():.6f}  max {cos.max():.6f}")
    for name, out in ref.items():
        if out.ndim == 2 and out.shape[1] > 1:
            agree = float(np.mean(out.argmax(1) == int8[name].argmax(1)))
            print(f"top-1 agreement INT8 vs FP32 ({name}): {agree:.4f} "
                  f"({int(round(agree * out.shape[0]))}/{out.shape[0]})")
    if f32:
        print(f"F32 ops ({len(f32)}):")
        for name, why in f32.items():
            print(f"  {name} ({g.op(name).type}): {why}")
    else:
        print("F32 ops: none (every compute op has a BM1684 INT8 form, no threshold-dependent fallback fires)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
