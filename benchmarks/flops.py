"""Per-op FLOPs of a canonical graph (multiply-adds count 2), per image."""

from __future__ import annotations

import numpy as np


def op_flops(graph, op) -> float:
    """FLOPs of ``op`` for ONE image (the graph's batch divided out)."""
    b = graph.batch
    out = op.out_shapes[0] if op.out_shapes else ()
    n_out = float(np.prod(out)) / b if out else 0.0
    if op.type == "Conv":
        w_shape = op.attr("kernel_shape")
        cin = graph.tensor_shape(op.inputs[0])[1]
        g = op.attr("group", 1)
        return 2.0 * n_out * (cin // g) * int(np.prod(w_shape))
    if op.type == "MatMul":
        k = graph.tensor_shape(op.inputs[0])[-1]
        return 2.0 * n_out * k
    if op.type in ("AvgPool", "MaxPool"):
        k = op.attr("kernel_shape") or (1,)
        return n_out * float(np.prod(k))
    return n_out  # element-wise ops: one op per output element


def suffix_flops(graph) -> list[float]:
    """suffix[i] = FLOPs (per image) of ops i+1..end."""
    f = [op_flops(graph, op) if op.type != "Input" else 0.0 for op in graph.ops]
    out = []
    for i in range(len(f)):
        out.append(float(sum(f[i + 1 :])))
    return out
