"""Float forward speed: qsens (to_jax -> jit) vs onnxruntime on EfficientNet-Lite0, batch 32, 224x224.

Usage: python benchmarks/forward.py [--batch 32] [--runs 7]
Writes benchmarks/results/forward_<device>.json.  Bar (issue 3): qsens <= 2.0x onnxruntime (stretch 1.5x).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, write  # noqa: E402


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
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-split", action="store_true")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from qsens.onnx import to_jax
    from qsens.zoo import zoo_path

    path = args.model or str(zoo_path("efficientnet_lite0.onnx"))
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    fn, params = to_jax(path)
    f = jax.jit(fn)
    inputs = {"input": jnp.asarray(x)}
    q_t, q_all = median_time(lambda: jax.block_until_ready(f(params, inputs)), n=args.runs, warmup=2)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    o_t, o_all = median_time(lambda: sess.run(None, {"input": x}), n=args.runs, warmup=2)
    y = np.asarray(f(params, inputs)["logits"])
    r = sess.run(None, {"input": x})[0]
    err = float(np.abs(y - r).max() / np.abs(r).max())
    ratio = q_t / o_t
    print(f"EfficientNet-Lite0 batch {args.batch}: qsens {q_t * 1e3:.1f} ms, onnxruntime {o_t * 1e3:.1f} ms, "
          f"ratio {ratio:.2f}x (bar 2.0x, stretch 1.5x); max rel err {err:.1e}")
    split = {} if args.no_split else time_split(fn, params, x, max(3, args.runs // 2))
    if split:
        tot = sum(split.values())
        print("time split (ops jitted one at a time): " + ", ".join(f"{k} {v * 1e3:.0f} ms ({v / tot:.0%})" for k, v in split.items()))
    out = write("forward", {
        "benchmark": "float forward, EfficientNet-Lite0, 224x224, float32",
        "batch": args.batch, "qsens_s": q_t, "onnxruntime_s": o_t, "ratio": ratio, "qsens_runs_s": q_all,
        "onnxruntime_runs_s": o_all, "ort_intra_op_threads": 2, "max_rel_err": err,
        "split_s": split, "machine": machine(),
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
