"""TPU-MLIR's accuracy aids on the float weights: weight equalization (``--we``), the bias shift of bias
correction (``--bc``) and SmoothQuant's scales (``--sq``), as pure functions ``params -> params`` plus a record.

What TPU-MLIR 1.23 computes is written down in ``docs/accuracy_aids.md`` (files and functions of
``run_calibration.py``, ``calibration/mix_precision.py``, ``calibration/smoothquant.py``).  TPU-MLIR rewrites the
Top MLIR's weight npz in place; here the canonical params (one float32 array per key) are copied and each change
is also recorded as per-channel vectors (``edits``) so :func:`qsens.onnx.rewrite.write_edited_onnx` can put the
same change into the ONNX initializers.  The bias-correction *search* (which layers, keep/revert) needs the INT8
simulation and lives in :mod:`qsens.search.biascorr`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import QsensError
from ..onnx.ir import Graph, Op

#: TPU-MLIR ``MixPrecSearcher.find_successor``: the activations allowed between the two convolutions
WE_ACTIVATIONS = ("Relu", "PRelu", "LeakyRelu")
#: ``weight_equalization``'s stop rule: ||W1 - W1'|| + ||W2 - W2'|| below this ends a pair's iterations
WE_CONVERGED = 1e-4
RELU6_MODES = ("tpu_mlir", "skip")


def _succ(graph: Graph, tensor: str) -> list[Op]:
    return list(graph.consumers(tensor))


def find_successor(graph: Graph, op: Op) -> list[str]:
    """TPU-MLIR ``find_successor``: the Conv ops fed by ``op`` directly or through one Relu/PRelu/LeakyRelu; ``[]``
    as soon as any consumer (or any consumer of such an activation) is something else."""
    result: list[str] = []
    for node in _succ(graph, op.outputs[0]):
        if node.type in WE_ACTIVATIONS:
            for nn in _succ(graph, node.outputs[0]):
                if nn.type == "Conv":
                    result.append(nn.name)
                else:
                    return []
        elif node.type == "Conv":
            result.append(node.name)
        else:
            return []
    return result


def _bounded(op: Op) -> bool:
    """A ReLU with a finite upper bound (ReLU6 / Clip(0, 6)): not positively homogeneous."""
    return op.relu_bound() is not None


def equalization_pairs(graph: Graph, relu6: str = "tpu_mlir") -> list[dict]:
    """The (first Conv, second Conv) pairs TPU-MLIR equalizes, in graph order, with the activation between them
    and whether a bounded ReLU sits on the path (``relu6``: ``skip`` drops those pairs)."""
    if relu6 not in RELU6_MODES:
        raise QsensError(f"--we_relu6 must be one of {', '.join(RELU6_MODES)}, got {relu6!r}")
    pairs = []
    for op in graph.ops:
        if op.type != "Conv":
            continue
        succ = find_successor(graph, op)
        if len(succ) != 1:
            continue
        second = graph.op(succ[0])
        act = next((c for c in _succ(graph, op.outputs[0]) if c.type in WE_ACTIVATIONS), None)
        bounded = _bounded(op) or (act is not None and _bounded(act))
        if bounded and relu6 == "skip":
            continue
        pairs.append({"first": op.name, "second": second.name, "activation": act.name if act else None,
                      "bounded_relu": bool(bounded)})
    return pairs


def _f32(x) -> np.ndarray:
    return np.array(np.asarray(x), dtype=np.float32, copy=True)


def equalize_pair(w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray):
    """One pass of TPU-MLIR's cross-layer equalization (float32, its operation order): per group of the second
    conv and per input channel ``ii`` of a group, ``r1 = max|W1[c]|`` (c the first conv's output channel),
    ``r2 = max|W2[group rows, ii]|``, ranges under 1e-6 count as 0, ``s = r1 / sqrt(r1 * r2)`` (1 when inf/nan);
    ``W1[c] /= s``, ``b1[c] /= s``, ``W2[group rows, ii] *= s``.  Returns the new arrays and ``s`` per channel."""
    n1, n2 = _f32(w1), _f32(w2)
    nb = None if b1 is None else _f32(b1)
    num_group = w1.shape[0] // w2.shape[1]
    gi, go = w1.shape[0] // num_group, w2.shape[0] // num_group
    scales = np.ones(w1.shape[0], np.float32)
    a1, a2 = np.abs(w1), np.abs(w2)
    with np.errstate(divide="ignore", invalid="ignore"):
        for g in range(num_group):
            for ii in range(w2.shape[1]):
                r1 = a1[g * gi + ii].max()
                r2 = a2[g * go:(g + 1) * go, ii].max()
                r1 = np.float32(0.0) if r1 < 1e-6 else r1
                r2 = np.float32(0.0) if r2 < 1e-6 else r2
                s = r1 / np.sqrt(r1 * r2)
                if np.isinf(s) or np.isnan(s):
                    s = np.float32(1.0)
                c = g * gi + ii
                n1[c] /= s
                n2[g * go:(g + 1) * go, ii] *= s
                if nb is not None:
                    nb[c] /= s
                scales[c] = s
    return n1, nb, n2, scales


def _converged(cur, new) -> bool:
    return float(np.linalg.norm(cur[0] - new[0]) + np.linalg.norm(cur[1] - new[1])) < WE_CONVERGED


def weight_equalization(graph: Graph, params: Mapping[str, Any], relu6: str = "tpu_mlir",
                        max_iter: int = 100) -> tuple[dict[str, np.ndarray], dict]:
    """TPU-MLIR ``MixPrecSearcher.weight_equalization`` on the canonical params.

    Pairs in graph order (a conv can be the second conv of one pair and the first of the next: the later pair
    sees the earlier one's result); each pair is iterated until :func:`_converged` (the pass that converges is
    not applied, like TPU-MLIR).  ``relu6="tpu_mlir"`` keeps TPU-MLIR's rule: a ReLU6 bound on the first conv is
    left at 6 while the channel is divided by ``s`` (the float model changes where the scaled pre-activation
    crosses the bound); ``"skip"`` leaves such pairs alone (the float model is unchanged).  Returns the new params
    (a copy; untouched keys shared) and a record: the pairs, iterations and per-channel total scales, plus
    ``edits`` (``{"op", "out_scale"}`` / ``{"op", "in_scale"}``) for the ONNX writer."""
    new = dict(params)
    pairs = equalization_pairs(graph, relu6)
    record: dict = {"relu6": relu6, "pairs": [], "edits": []}
    for p in pairs:
        op1, op2 = graph.op(p["first"]), graph.op(p["second"])
        k1, kb, k2 = op1.weight("filter"), op1.weight("bias"), op2.weight("filter")
        if k1 is None or k2 is None:
            continue
        total = None
        it = 0
        while it < max_iter:
            it += 1
            w1, w2 = _f32(new[k1]), _f32(new[k2])
            b1 = None if kb is None else _f32(new[kb])
            if w1.ndim != 4 or w2.ndim != 4 or w1.shape[0] % w2.shape[1]:
                break
            n1, nb, n2, s = equalize_pair(w1, b1, w2)
            if _converged((w1, w2), (n1, n2)):
                break
            new[k1], new[k2] = n1, n2
            if kb is not None:
                new[kb] = nb
            total = s if total is None else total * s
        if total is None:
            record["pairs"].append({**p, "iterations": it, "applied": False})
            continue
        record["pairs"].append({**p, "iterations": it, "applied": True, "groups": int(new[k1].shape[0] // new[k2].shape[1]),
                                "scale_min": float(total.min()), "scale_max": float(total.max()),
                                "scales": [float(v) for v in total]})
        record["edits"].append({"op": op1.name, "out_scale": total})
        record["edits"].append({"op": op2.name, "in_scale": total, "group_in": int(new[k2].shape[1])})
    return new, record


# ------------------------------------------------------------------------------------------- bias correction
def shift_bias(params: Mapping[str, Any], op: Op, delta: np.ndarray) -> dict[str, np.ndarray]:
    """TPU-MLIR ``run_bias_correction``'s change: ``bias += mean_diff`` (float32) for one Conv with a bias."""
    kb = op.weight("bias")
    if kb is None:
        raise QsensError(f"op '{op.name}': bias correction needs a Conv with a bias")
    new = dict(params)
    b = _f32(params[kb])
    b += np.asarray(delta, np.float32).reshape(b.shape)
    new[kb] = b
    return new


# ------------------------------------------------------------------------------------------------ SmoothQuant
#: ops SmoothQuant looks through when they keep the last axis (TPU-MLIR 1.23 ``skip_reshape_like_users``:
#: top.Slice / Squeeze / Reshape / Reduce; qsens's Reshape also holds ONNX Flatten / Unsqueeze, which TPU-MLIR
#: imports as top.Reshape / top.Unsqueeze: Unsqueeze is not looked through there)
SQ_RESHAPE_LIKE = ("Slice", "Reduce")
SQ_RESHAPE_ONNX = ("Reshape", "Squeeze", "Flatten")


def sq_users(graph: Graph, op: Op) -> list[Op]:
    """TPU-MLIR 1.23 ``SmoothQuant.skip_reshape_like_users``: the consumers of ``op``'s output, looking through
    Reshape / Squeeze / Slice / Reduce ops whose output keeps the input's last dim, Permutes that keep the last axis
    last, and Concats all of whose inputs were reached and that keep the last dim; the users reached, each once, in
    graph order (TPU-MLIR returns a set)."""
    def last(t):
        return graph.tensor_shape(t)[-1]

    cands = list(_succ(graph, op.outputs[0]))
    cands.sort(key=lambda u: u.type != "Concat")
    seen: set[str] = set()
    users: dict[str, Op] = {}

    def add(more):
        for u in more:
            if any(c.name == u.name for c in cands):
                continue
            if u.type == "Concat":
                cands.insert(0, u)
            else:
                cands.append(u)

    while cands:
        u = cands.pop()
        through = False
        if (u.type in SQ_RESHAPE_LIKE or (u.type == "Reshape" and u.onnx_type in SQ_RESHAPE_ONNX)) and u.inputs:
            through = last(u.inputs[0]) == last(u.outputs[0])
        elif u.type == "Permute":
            order = [int(v) for v in (u.attr("perm") or u.attr("order") or ())]
            through = bool(order) and len(order) == order[-1] + 1
        elif u.type == "Concat":
            through = all(t in seen for t in u.inputs) and last(u.inputs[0]) == last(u.outputs[0])
        if through:
            add(_succ(graph, u.outputs[0]))
        else:
            users[u.name] = u
        seen.add(u.outputs[0])
    order = {o.name: i for i, o in enumerate(graph.ops)}
    return sorted(users.values(), key=lambda u: order[u.name])


def _chain_to_matmul(graph: Graph, op: Op) -> tuple[list[Op], Op] | None:
    """From ``op``, single users up to the next MatMul: ``(ops between, that MatMul)``, or None when a tensor on the
    way has several users (or none) or an op between is not a Reshape / Permute (TPU-MLIR's walk counts op users
    only: a graph output on the way is not a user)."""
    between: list[Op] = []
    users = _succ(graph, op.outputs[0])
    while True:
        if len(users) != 1:
            return None
        if users[0].type == "MatMul":
            break
        between.append(users[0])
        users = _succ(graph, users[0].outputs[0])
    if any(u.type not in ("Reshape", "Permute") for u in between):
        return None
    return between, users[0]


def vproj_oproj(graph: Graph, op: Op) -> Op | None:
    """TPU-MLIR 1.23 ``SmoothQuant.is_vproj_matmul`` (BERT attention): ``op`` is a MatMul by a weight whose output
    reaches ``attn @ v`` through Reshape / Permute ops only, and that MatMul's output reaches the next MatMul (the
    output projection, returned) through the mirror image of those ops (same types in reverse order, each second op's
    input shaped as its first op's output, the last one's output shaped as ``op``'s).  Both chains must be
    non-empty (TPU-MLIR indexes the second one's last op)."""
    if op.type != "MatMul" or op.weight("filter") is None:
        return None
    first = _chain_to_matmul(graph, op)
    if first is None or not first[0]:
        return None
    second = _chain_to_matmul(graph, first[1])
    if second is None or not second[0]:
        return None
    a, b = first[0], list(second[0])
    if graph.tensor_shape(op.outputs[0]) != graph.tensor_shape(b[-1].outputs[0]) or len(a) != len(b):
        return None
    for f in a:
        sec = b.pop()
        if f.type != sec.type or graph.tensor_shape(sec.inputs[0]) != graph.tensor_shape(f.outputs[0]):
            return None
    o = second[1]
    return o if o.weight("filter") is not None else None


def lns_needing_mul(graph: Graph) -> dict[str, list[str]]:
    """TPU-MLIR 1.23 ``SmoothQuant.insert_mul_after_ln``'s candidates: a LayerNorm whose users (:func:`sq_users`) are
    of exactly the types {Add, MatMul} (a post-LN block: the residual Add and the next projections).  TPU-MLIR inserts
    ``Mul_after_<ln>`` (by ones) between the LayerNorm and those MatMuls and smooths that Mul.  Returns ``{LayerNorm:
    [its MatMul users]}``; qsens inserts the Mul only where every such MatMul reads the LayerNorm directly (TPU-MLIR
    swaps the first operand of a MatMul reached through a Reshape too, a shape error there)."""
    out = {}
    for op in graph.ops:
        if op.type not in ("LayerNorm", "LayerNormalization"):
            continue
        users = sq_users(graph, op)
        if {u.type for u in users} != {"Add", "MatMul"}:
            continue
        mms = [u for u in users if u.type == "MatMul"]
        if all(op.outputs[0] in u.inputs for u in mms):
            out[op.name] = [u.name for u in mms]
    return out


def insert_mul_after_ln(graph: Graph, model_path: str, out_path: str,
                        weights: Mapping[str, Any] | None = None) -> dict[str, str] | None:
    """Write ``model_path`` with TPU-MLIR's ``insert_mul_after_ln`` done in ONNX to ``out_path``: for each LayerNorm of
    :func:`lns_needing_mul`, a ``Mul`` by the initializer ``<ln>_scaled_weight`` (``weights[that name]``, the
    smoothed ``1 / s`` of :func:`smoothquant`; ones, TPU-MLIR's value before smoothing, when absent; the LayerNorm
    gain's shape) whose output ``Mul_after_<LayerNorm output>`` feeds the LayerNorm's MatMul users instead.  Returns
    ``{LayerNorm: inserted Mul's ONNX output}``, or None when there is nothing to insert (nothing written)."""
    import onnx
    from onnx import helper, numpy_helper

    need = lns_needing_mul(graph)
    if not need:
        return None
    model = onnx.load(model_path)
    inits = {i.name: i for i in model.graph.initializer}
    done: dict[str, str] = {}
    new_nodes = []
    for n in model.graph.node:
        new_nodes.append(n)
        op = next((graph.op(k) for k in need if n.name and n.name in graph.op(k).onnx_nodes), None)
        if op is None or n.op_type != "LayerNormalization" or op.name in done:
            continue
        gain = inits.get(n.input[1]) if len(n.input) > 1 else None
        shape = list(numpy_helper.to_array(gain).shape) if gain is not None else [graph.tensor_shape(op.outputs[0])[-1]]
        wname = f"{op.name}_scaled_weight"
        w = np.asarray((weights or {}).get(wname, np.ones(shape, np.float32)), np.float32).reshape(shape)
        model.graph.initializer.append(numpy_helper.from_array(w, wname))
        out = f"Mul_after_{n.output[0]}"
        new_nodes.append(helper.make_node("Mul", [n.output[0], wname], [out], name=f"Mul_after_{n.name}"))
        done[op.name] = out
        for mm in need[op.name]:
            for x in model.graph.node:
                if x.name in graph.op(mm).onnx_nodes and x.op_type == "MatMul" and x.input[0] == n.output[0]:
                    x.input[0] = out
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, out_path)
    return done


def smooth_ops(graph: Graph, params: Mapping[str, Any]) -> list[str]:
    """TPU-MLIR ``SmoothQuant.get_smooth_op_names`` (without ``insert_mul_after_ln``): a LayerNorm whose users
    (:func:`sq_users`, through reshape-like ops) are all MatMul, a Mul by a weight as wide as its last axis whose
    users are all MatMul, or a BERT value projection (:func:`vproj_oproj`)."""
    out = []
    for op in graph.ops:
        if op.type in ("LayerNorm", "LayerNormalization", "Mul"):
            users = sq_users(graph, op)
            if not users or any(u.type != "MatMul" for u in users):
                continue
            if op.type != "Mul":  # TPU-MLIR's top.LayerNorm (qsens keeps the ONNX name)
                out.append(op.name)
            else:
                ws = [k for _, k in op.weights]
                if ws and np.shape(params[ws[0]])[-1:] == tuple(op.out_shapes[0][-1:]):
                    out.append(op.name)
        elif vproj_oproj(graph, op) is not None:
            out.append(op.name)
    return out


def _qdq_weight(w):
    mxw = np.abs(w).max(axis=1, keepdims=True)
    s = mxw / 127
    return np.clip(np.round(w / s), -127, 127) * s


def _qdq_act(x, mxa):
    s = mxa / 127
    return np.clip(np.round(x / s), -127, 127) * s


def smoothquant_scale(acts: list[np.ndarray], weights: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """TPU-MLIR ``SmoothQuant.search_opt_scale`` for one smoothed op: ``acts`` are its outputs (last axis =
    channels) on the calibration samples, ``weights`` the (in, out) weights of its MatMul users.  Candidates:
    ``s = amax^alpha / wmax^(1-alpha)`` for alpha in 0, 0.05, ..., 1.0, then OS+'s ``max(1, amax / (max(amax) *
    (k+1)/20))`` for k in 0..19; inf/nan -> 1; each scored by the summed MSE of ``qdq(x/s) @ qdq_perchannel(W*s)``
    against ``x @ W`` (per-tensor activation max ``max(amax/s)``, per-row weight max, 127 levels); the first
    minimum wins.  ``amax`` is the per-channel max |x| over the samples, ``wmax`` the per-input-row max |W| over
    the users."""
    amax = None
    for x in acts:
        m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
        amax = m if amax is None else np.maximum(amax, m)
    wmax = None
    for w in weights:
        m = np.abs(w).max(axis=1)
        wmax = m if wmax is None else np.maximum(wmax, m)
    ref = [[x @ w for x in acts] for w in weights]

    def loss_of(s):
        mxa = (amax / s).max()
        xs = [_qdq_act(x / s, mxa) for x in acts]
        tot = 0.0
        for w, r in zip(weights, ref):
            qw = _qdq_weight(w * s.reshape(-1, 1))
            for x, y in zip(xs, r):
                tot += np.mean((x @ qw - y) ** 2)
        return tot

    best, best_s, best_from = float("inf"), None, None
    with np.errstate(divide="ignore", invalid="ignore"):
        for alpha in np.arange(0, 1.05, 0.05):
            s = amax ** alpha / wmax ** (1 - alpha)
            s[np.isinf(s)] = 1
            s[np.isnan(s)] = 1
            v = loss_of(s)
            if v < best:
                best, best_s, best_from = v, s, ("alpha", float(alpha))
        amx = amax.max()
        for step in range(20):
            s = np.maximum(1.0, amax / (amx * (1 + step) / 20))
            s[np.isinf(s)] = 1
            s[np.isnan(s)] = 1
            v = loss_of(s)
            if v < best:
                best, best_s, best_from = v, s, ("os+", step)
    return best_s, {"loss": float(best), "chosen": best_from}


def smoothquant(graph: Graph, params: Mapping[str, Any], acts: Mapping[str, list[np.ndarray]]) -> tuple[dict, dict]:
    """TPU-MLIR 1.23 ``SmoothQuant.smoothquant`` on the canonical params: for each op of :func:`smooth_ops` and each
    LayerNorm of :func:`lns_needing_mul` (in graph order), ``s`` from :func:`smoothquant_scale` on ``acts[op]`` (its
    float outputs on the calibration samples, all taken from the *original* model as TPU-MLIR collects them before
    any rewrite) and its MatMul users' weights; the op's weight (a LayerNorm's gain, a Mul's per-channel weight) and
    bias are divided by ``s``, each MatMul user's weight rows multiplied by ``s`` -- the float model is unchanged up
    to float rounding (``x/s @ (s W) = x @ W``).  A LayerNorm that also feeds an Add keeps its weights: the Mul
    TPU-MLIR inserts in front of its MatMuls gets ``1 / s``, returned as the new param ``<ln>_scaled_weight`` (shape
    of the gain; :func:`insert_mul_after_ln` writes it).  Returns ``(new params, {op: {"scale", "users", "loss",
    "chosen"}})``, a LayerNorm's record under TPU-MLIR's name ``Mul_after_<ln>``."""
    new = {k: np.array(v, np.float32, copy=True) for k, v in params.items()}
    rec: dict = {}
    plain = set(smooth_ops(graph, params))
    ln_mul = lns_needing_mul(graph)
    for op in graph.ops:
        name = op.name
        if name not in plain and name not in ln_mul:
            continue
        if name in ln_mul:
            users = [graph.op(u) for u in ln_mul[name]]
            roles: tuple = ()
        elif op.type == "MatMul":  # a value projection: its columns (and bias) / s, the output projection's rows * s
            users = [vproj_oproj(graph, op)]
            roles = ("filter", "bias")
        else:
            users = sq_users(graph, op)
            roles = ("in1", "in2") if op.type != "Mul" else tuple(r for r, _ in op.weights[:1])
        keys = [u.weight("filter") for u in users]
        s, info = smoothquant_scale(acts[name], [new[k] for k in keys])
        s = np.asarray(s, np.float32)
        for r, k in op.weights:
            if r in roles:  # the last axis is the smoothed channel axis (a filter's columns)
                new[k] = (new[k].reshape(-1, s.size) / s).reshape(new[k].shape).astype(np.float32)
        if name in ln_mul:
            gain = next((k for r, k in op.weights if r == "in1"), None)
            shape = np.shape(params[gain]) if gain is not None else (s.size,)
            new[f"{name}_scaled_weight"] = (np.ones(shape, np.float32).reshape(-1, s.size) / s).reshape(shape)
        for k in keys:
            new[k] = (new[k] * s.reshape(-1, 1)).astype(np.float32)
        rec[f"Mul_after_{name}" if name in ln_mul else name] = {"scale": s, "users": [u.name for u in users], **info}
    return new, rec
