"""Write changed float weights back into the original ONNX model (the accuracy aids' ``--save_model``).

TPU-MLIR's ``--we`` / ``--bc`` / ``--sq`` rewrite the Top MLIR's weight npz; qsens writes the same change into
the ONNX initializers, so ``model_transform.py`` on the written file gives TPU-MLIR the changed weights (graph,
names and every other initializer unchanged).  A canonical op backed by one ONNX Conv gets its new filter/bias
arrays; two 1x1 convolutions merged into one canonical Conv (TPU-MLIR merges them too) get the per-channel
``edits``: an output scale divides the second conv's rows and bias, an input scale multiplies the first conv's
columns, a bias shift is added to the second conv's bias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError
from .ir import Graph


def _scale_in(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Multiply input channel ``c`` (of all the conv's input channels) of a (O, I/G, ...) filter by ``s[c]``."""
    w = w.copy()
    ipg = w.shape[1]
    groups = len(s) // ipg
    opg = w.shape[0] // groups
    for c in range(len(s)):
        g, ii = divmod(c, ipg)
        w[g * opg:(g + 1) * opg, ii] *= s[c]
    return w


def write_edited_onnx(src: str, out: str, graph: Graph, old: Mapping[str, Any], new: Mapping[str, Any],
                      edits: Sequence[Mapping[str, Any]] = ()) -> dict:
    """Write ``src`` with the params that differ between ``old`` and ``new`` (canonical keys) to ``out``.
    Returns ``{"initializers": [names rewritten], "ops": [canonical ops touched]}``."""
    model = onnx.load(src)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node if n.name}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    changed = {k for k in new if k in old and not np.array_equal(np.asarray(old[k]), np.asarray(new[k]))}
    by_op: dict[str, list] = {}
    for e in edits:
        by_op.setdefault(e["op"], []).append(e)
    touched = sorted({op.name for op in graph.ops for _, k in op.weights if k in changed})
    values: dict[str, np.ndarray] = {}

    def take(name: str, op_name: str) -> np.ndarray:
        if name not in inits:
            raise ModelError(f"{src}: op '{op_name}': weight '{name}' is not an initializer; cannot write the changed "
                             f"weights back (write the model with constant folding, e.g. onnxsim, first)")
        if uses.get(name, 0) > 1:
            raise ModelError(f"{src}: op '{op_name}': initializer '{name}' is shared by {uses[name]} nodes; cannot "
                             f"change it for one op (un-share the weights in the ONNX model first)")
        if name not in values:
            values[name] = numpy_helper.to_array(inits[name]).astype(np.float32)
        return values[name]

    for name in touched:
        op = graph.op(name)
        # a Conv / MatMul with the bias of the Add it absorbed (onnxsim's fusions, TPU-MLIR's MatMulWithBias): the
        # filter is the node's own initializer, the bias the Add's
        target = {k: k for _, k in op.weights if k in changed and k in inits}
        fused = [k for _, k in op.weights if k in changed and k not in inits and k.endswith("@fused_bias")]
        if fused:
            adds = [nodes.get(n) for n in op.onnx_nodes]
            bias_init = [i for n in adds if n is not None and n.op_type == "Add" for i in n.input if i in inits]
            if len(bias_init) != 1:
                raise ModelError(f"{src}: op '{name}': cannot find the ONNX Add initializer behind its fused bias")
            target.update({k: bias_init[0] for k in fused})
        if all(k in target for _, k in op.weights if k in changed):  # every changed weight has an initializer
            for _, k in op.weights:
                if k in target:
                    cur = take(target[k], name)
                    values[target[k]] = np.asarray(new[k], np.float32).reshape(cur.shape)
            continue
        convs = [nodes.get(n) for n in op.onnx_nodes]
        convs = [n for n in convs if n is not None and n.op_type == "Conv"]
        if len(convs) != 2 or name not in by_op:
            raise ModelError(f"{src}: op '{name}': its weights are fused from ONNX nodes {list(op.onnx_nodes)}; qsens "
                             f"can write back only single convs and merged 1x1 conv pairs")
        first, second = convs
        for e in by_op[name]:
            if "out_scale" in e:
                s = np.asarray(e["out_scale"], np.float32)
                w = take(second.input[1], name)
                w /= s.reshape((-1,) + (1,) * (w.ndim - 1))
                if len(second.input) > 2 and second.input[2]:
                    take(second.input[2], name)[...] /= s
            if "in_scale" in e:
                w = take(first.input[1], name)
                values[first.input[1]] = _scale_in(w, np.asarray(e["in_scale"], np.float32))
            if "bias_add" in e:
                if len(second.input) < 3 or not second.input[2]:
                    raise ModelError(f"{src}: op '{name}': the merged conv '{second.name}' has no bias to correct")
                take(second.input[2], name)[...] += np.asarray(e["bias_add"], np.float32)
    for k, v in values.items():
        inits[k].CopyFrom(numpy_helper.from_array(v.astype(np.float32), k))
    onnx.save(model, out)
    return {"initializers": sorted(values), "ops": touched}
