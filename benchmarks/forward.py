"""Float forward speed: qsens (to_jax -> jit) vs onnxruntime on EfficientNet-Lite0, batch 32, 224x224.

Usage: python benchmarks/forward.py [--batch 32] [--runs 11]
Writes benchmarks/results/forward_<device>.json.  Bar (issue 3): qsens <= 2.0x onnxruntime (stretch 1.5x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, write  # noqa: E402  (common imports qsens first)


def op_category(op) -> str:
    if op.type == "Conv":
        k = op.attr("kernel_shape")
        if op.attr("group", 1) > 1:
            return "depthwise"
        return "dots (1x1 conv, FC)" if tuple(k) == (1, 1) else "other conv"
    if op.type == "MatMul":
        return "dots (1x1 conv, FC)"
    return "other"


def time_split(fn, params, x, runs):
    """Per-op times (each op's own executable on its real input, as the search runs them), per category."""
    from qsens.engine import Engine

    e = Engine(fn.model, x.shape[0])
    env = e.input_env({e.graph.inputs[0]: x})
    split: dict[str, float] = {}
    for i, op in enumerate(e.graph.ops):
        if op.type == "Input":
            continue
        exe, w, acts = e.float_exe(i), e.weights(op), [env[t] for t in op.inputs]
        t, _ = median_time(lambda exe=exe, w=w, acts=acts: jax.block_until_ready(exe(w, acts)), n=runs, warmup=1)
        split[op_category(op)] = split.get(op_category(op), 0.0) + t
        env = e.run(env, i, i + 1)
    return split


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-split", action="store_true")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from qsens.onnx import to_jax
    from qsens.zoo import zoo_path

    path = args.model or str(zoo_path("efficientnet_lite0.onnx"))
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    fn, params = to_jax(path)
    f = jax.jit(fn, static_argnames=("chunk",))
    inputs = {"input": jnp.asarray(x)}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    chunk = fn.model.chunk_for(args.batch)
    runners = {
        "qsens": lambda: jax.block_until_ready(f(params, inputs)),
        "onnxruntime": lambda: sess.run(None, {"input": x}),
    }
    if chunk:  # the same forward with the whole batch in one step, for the record
        runners["qsens_whole_batch"] = lambda: jax.block_until_ready(f(params, inputs, chunk=0))
    # interleaved rounds: this 2-core VM's speed drifts by up to ~20% over minutes (memory-bound code more), so
    # every round times each runner once, back to back, and the ratio is taken per round
    times = {k: [] for k in runners}
    for g in runners.values():
        g(), g()
    for _ in range(args.runs):
        for k, g in runners.items():
            t0 = time.perf_counter()
            g()
            times[k].append(time.perf_counter() - t0)
    # and each runner on its own, back to back (its caches warm from its own previous call), for the record
    alone = {k: median_time(g, n=args.runs, warmup=1)[0] for k, g in runners.items()}
    q_t, o_t = float(np.median(times["qsens"])), float(np.median(times["onnxruntime"]))
    q_all, o_all = times["qsens"], times["onnxruntime"]
    w_t = float(np.median(times["qsens_whole_batch"])) if chunk else None
    round_ratios = [a / b for a, b in zip(q_all, o_all)]
    y = np.asarray(f(params, inputs)["logits"])
    r = sess.run(None, {"input": x})[0]
    err = float(np.abs(y - r).max() / np.abs(r).max())
    ratio = float(np.median(round_ratios))
    print(f"EfficientNet-Lite0 batch {args.batch}: qsens {q_t * 1e3:.1f} ms, onnxruntime {o_t * 1e3:.1f} ms, "
          f"ratio {ratio:.2f}x (median of {args.runs} interleaved rounds; bar 2.0x, stretch 1.5x); max rel err {err:.1e}")
    print(f"  each on its own ({args.runs} calls in a row): qsens {alone['qsens'] * 1e3:.1f} ms, onnxruntime "
          f"{alone['onnxruntime'] * 1e3:.1f} ms, ratio {alone['qsens'] / alone['onnxruntime']:.2f}x")
    if w_t is not None:
        print(f"  qsens runs the batch in chunks of {chunk} (Model.chunk_for); whole batch in one step: {w_t * 1e3:.1f} ms")
    split = {} if args.no_split else time_split(fn, params, x, max(3, args.runs // 2))
    if split:
        tot = sum(split.values())
        print("time split (ops jitted one at a time): " + ", ".join(f"{k} {v * 1e3:.0f} ms ({v / tot:.0%})" for k, v in split.items()))
    out = write("forward", {
        "benchmark": "float forward, EfficientNet-Lite0, 224x224, float32",
        "batch": args.batch, "qsens_s": q_t, "onnxruntime_s": o_t, "ratio": ratio, "qsens_runs_s": q_all,
        "qsens_chunk": chunk, "qsens_whole_batch_s": w_t,
        "ratio_per_round": round_ratios, "ratio_of_medians": q_t / o_t,
        "standalone_s": alone, "standalone_ratio": alone["qsens"] / alone["onnxruntime"],
        "onnxruntime_runs_s": o_all, "ort_intra_op_threads": 2, "max_rel_err": err,
        "split_s": split, "machine": machine(),
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
