"""``to_jax``: an ONNX model as a pure JAX function over the canonical graph."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx

from ..errors import ModelError
from . import registry
from .canonical import Canonicalizer
from .ir import Graph, Op, batch_separable  # noqa: F401  (batch_separable: public here too)
from .load import load_model, resolve_input_shapes


def run_op(op: Op, params: Mapping[str, Any], acts: Sequence[Any]) -> list:
    """Float (reference) execution of one canonical op in NCHW: its ONNX implementation plus a fused ReLU."""
    return run_op_roles(op, {r: params[k] for r, k in op.weights}, acts)


def onnx_inputs(op: Op, weights: Mapping[str, Any], acts: Sequence[Any], const_fn=None) -> list:
    """The ONNX positional inputs of ``op``'s main node: activations, weights (by role), constants, ``None``.
    ``const_fn`` maps weights and constants (e.g. a layout permutation)."""
    consts = dict(op.consts)
    f = const_fn or (lambda v: v)
    ins = []
    for kind, ref in op.slots:
        if kind == "act":
            ins.append(acts[ref])
        elif kind == "weight":
            ins.append(f(weights[ref]))
        elif kind == "const":
            ins.append(f(consts[ref]))
        else:
            ins.append(None)
    return ins


def run_op_roles(op: Op, weights: Mapping[str, Any], acts: Sequence[Any]) -> list:
    """:func:`run_op` with the weights given by role (``{"filter": W, ...}``): shareable between ops.
    An op with the ``per_sample`` attribute (a fixed-batch model run sample by sample: :attr:`Graph.per_sample`)
    runs once per deployment batch of its stacked inputs."""
    ps = op.attr("per_sample")
    if ps:
        return _run_per_sample(op, weights, acts, ps)
    outs = registry.OPS[op.onnx_type].impl(jnp, onnx_inputs(op, weights, acts), dict(op.attrs))
    if op.type != "Relu":
        outs = [_relu(op, outs[0])] + list(outs[1:])
    return list(outs)


def _run_per_sample(op: Op, weights: Mapping[str, Any], acts: Sequence[Any], ps) -> list:
    """``lax.map`` of ``op`` (at its deployment shapes) over the ``n`` deployment batches stacked in ``acts``."""
    n, in_shapes, out_shapes = ps
    plain = dataclasses.replace(op, attrs=tuple((k, v) for k, v in op.attrs if k != "per_sample"))
    xs = tuple(jnp.reshape(a, (n,) + tuple(s)) for a, s in zip(acts, in_shapes))
    ys = jax.lax.map(lambda x: tuple(run_op_roles(plain, weights, list(x))), xs)
    return [jnp.reshape(y, (n * s[0],) + tuple(s[1:]) if s else (n,)) for y, s in zip(ys, out_shapes)]


def _relu(op: Op, y):
    if op.attr("do_relu"):
        y = jnp.maximum(y, jnp.zeros((), y.dtype))
        lim = op.attr("relu_limit", -1.0)
        if lim is not None and lim >= 0:
            y = jnp.minimum(y, jnp.asarray(lim, y.dtype))
    return y


def layout_plan(graph: Graph, params: Mapping[str, Any], channels_last: bool = True) -> dict[str, bool]:
    """Static layout of every tensor while the graph runs: True = NHWC (its producer runs channel-last)."""
    from . import layout as L

    plan: dict[str, bool] = {}
    for op in graph.ops:
        use = False
        if channels_last and op.type != "Input" and not op.attr("per_sample"):
            weights = {r: params[k] for r, k in op.weights}
            use = L.nhwc_ok(op, [graph.tensor_shape(t) for t in op.inputs], weights, dict(op.consts))
        for t in op.outputs:
            plan[t] = use
    return plan


def op_runs_nhwc(op: Op, plan: Mapping[str, bool]) -> bool:
    return bool(op.outputs) and plan.get(op.outputs[0], False)


#: The float types a mixed model's float layers can run in (TPU-MLIR's ``--fp_type``; ``FLOAT_MAP``: BM1684X's default
#: is F16) and the dtype qsens rounds to for each (None: plain float32).
FLOAT_DTYPES = {"F32": None, "F16": jnp.float16, "BF16": jnp.bfloat16}
#: Op kinds TPU-MLIR 1.23 keeps F32 inside a BM1684X F16 model (a Cast F16 -> F32 in front of them): read from its
#: lowered F16 models of the fixtures (tests/fixtures/tpu_mlir/*/f16_bm1684x): AvgPool (2-D and global, and
#: ReduceMean lowered to it), Div, Sigmoid, Tanh, HardSigmoid.  (Exp, Clip, Softmax, PRelu, LeakyRelu, MaxPool, Add,
#: Mul, Concat, Conv/Deconv/MatMul, Scale, Pad, Permute, SubConst run F16.)
FLOAT_TYPE_KEEPS_F32 = frozenset({"AvgPool", "Div", "Sigmoid", "Tanh", "HardSigmoid"})
#: ... and the reshapes, which take their input's type (an F32 AvgPool's Flatten stays F32).
FLOAT_TYPE_FOLLOWS_INPUT = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def round_to_float_type(x, float_type: str = "F32"):
    """``x`` rounded to ``float_type`` and widened back to float32: round to nearest, ties to even (IEEE, XLA's
    ``convert``), overflow to inf, subnormals kept.  F32 (and integer arrays) pass through untouched."""
    dt = FLOAT_DTYPES[float_type]
    if dt is None or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        return x
    return jnp.asarray(x).astype(dt).astype(jnp.result_type(x))


def op_float_type(op: Op, float_type: str = "F32") -> str:
    """The float type ``op`` runs in when a model's float layers are ``float_type``: F32 for the kinds TPU-MLIR
    keeps F32 (:data:`FLOAT_TYPE_KEEPS_F32`) and the reshapes (:data:`FLOAT_TYPE_FOLLOWS_INPUT`)."""
    if float_type == "F32" or op.type in FLOAT_TYPE_KEEPS_F32 or op.type in FLOAT_TYPE_FOLLOWS_INPUT:
        return "F32"
    return float_type


def f32_tensor(graph: Graph, tensor: str, float_type: str = "F32") -> bool:
    """True when ``tensor`` is F32 in a mixed model whose float layers run ``float_type``: a graph input or the output
    of an op kept F32 (:func:`op_float_type`), seen through reshapes (which take their input's type).  An F16 /
    BF16 consumer of such a tensor casts it (rounds it); of an F16 producer's or a dequantized INT8 one it does not."""
    p = graph.producer(tensor) if tensor in graph.tensors else None
    while p is not None and p.type in FLOAT_TYPE_FOLLOWS_INPUT and p.inputs:
        p = graph.producer(p.inputs[0])
    return p is None or p.type == "Input" or op_float_type(p, float_type) == "F32"


def float_type_op(fn, float_type: str = "F32", round_in: Sequence[bool] | None = None):
    """``fn(op, weights, acts, in_nhwc, nhwc) -> outputs`` run as TPU-MLIR runs an F16 / BF16 op on BM1684X (its
    interpreter, TPU-MLIR 1.23, checked tensor by tensor on the F16 and mixed INT8/F16 models of
    tests/fixtures/tpu_mlir/*/f16_bm1684x): the lowering stores every weight in the float type except a *bias*
    (F32), the arithmetic is float32 and the output is rounded to the float type.  Input ``k`` is rounded when
    ``round_in[k]`` (default: all): TPU-MLIR's Cast F32 -> F16 rounds (round to nearest even), its Cast INT8 -> F16
    does not (the dequantized ``q * s`` stays float32 inside the interpreter), an F16 producer's output is rounded
    already.  A Scale (a BatchNorm, or a per-channel Add/Mul) is lowered to a depthwise convolution:
    ``x * fp(q_scale) + q_bias`` with its folded float32 parameters.  ``float_type == "F32"`` returns ``fn`` itself
    (the F32 path is unchanged, bit for bit)."""
    if FLOAT_DTYPES[float_type] is None:
        return fn
    r = functools.partial(round_to_float_type, float_type=float_type)

    def wrapped(op, weights, acts, in_nhwc, nhwc):
        if op_float_type(op, float_type) == "F32":
            return fn(op, weights, acts, in_nhwc, nhwc)
        acts = [r(a) if (round_in is None or round_in[k]) else a for k, a in enumerate(acts)]
        if op.type == "Scale" and "q_scale" in weights and "q_bias" in weights:
            return [r(_scale_as_conv(op, r(weights["q_scale"]), weights["q_bias"], acts[0], in_nhwc[0], nhwc))]
        w = {k: (v if k.endswith("bias") else r(v)) for k, v in weights.items()}
        return [r(y) for y in fn(op, w, acts, in_nhwc, nhwc)]

    return wrapped


def _scale_as_conv(op: Op, a, b, x, x_nhwc: bool, nhwc: bool):
    """``x * a + b`` per channel (TPU-MLIR's Scale as a depthwise 1x1 convolution), in the layout ``nhwc`` asks."""
    from . import layout as L

    if x.ndim == 4 and x_nhwc != nhwc:
        x = jnp.transpose(x, L.TO_NHWC if nhwc else L.TO_NCHW)
    axis = x.ndim - 1 if (x.ndim == 4 and nhwc) else 1
    shp = [1] * x.ndim
    shp[axis] = -1
    return _relu(op, x * jnp.reshape(a, shp).astype(x.dtype) + jnp.reshape(b, shp).astype(x.dtype))


def run_op_planned(op: Op, weights: Mapping[str, Any], acts: Sequence[Any], in_nhwc: Sequence[bool], nhwc: bool,
                   float_type: str = "F32", round_in: Sequence[bool] | None = None) -> list:
    """Run ``op`` on activations laid out as ``in_nhwc`` says; outputs NHWC iff ``nhwc``; in ``float_type``
    (:func:`float_type_op`, which rounds the inputs ``round_in`` flags)."""
    if float_type != "F32":
        return float_type_op(_run_op_planned, float_type, round_in)(op, weights, acts, in_nhwc, nhwc)
    return _run_op_planned(op, weights, acts, in_nhwc, nhwc)


def _run_op_planned(op: Op, weights: Mapping[str, Any], acts: Sequence[Any], in_nhwc: Sequence[bool], nhwc: bool) -> list:
    from . import layout as L

    if nhwc:
        xs = [a if f else jnp.transpose(a, L.TO_NHWC) for a, f in zip(acts, in_nhwc)]
        outs = L.run_nhwc(op, xs, weights, dict(op.consts))
        return [_relu(op, outs[0])] + list(outs[1:])
    xs = [jnp.transpose(a, L.TO_NCHW) if f else a for a, f in zip(acts, in_nhwc)]
    return run_op_roles(op, weights, xs)


def run_graph(
    graph: Graph,
    params: Mapping[str, Any],
    env: dict[str, Any],
    start: int = 0,
    stop: int | None = None,
    *,
    keep: Sequence[str] = (),
    mix_fn=None,
    channels_last: bool = True,
    float_type: str = "F32",
) -> dict[str, Any]:
    """Run ``graph.ops[start:stop]`` on the tensors in ``env`` (activations by canonical tensor name, NCHW).

    Returns the new env holding only tensors still needed after ``stop`` (by liveness) plus ``keep``, all
    in the graph's own (ONNX, NCHW) layout.
    ``mix_fn(op, params, acts) -> None or (outputs, flag)`` computes an alternative (e.g. INT8) result in NCHW;
    the op's output is ``where(flag, alternative, float)``, so a False flag gives the float result bit for bit.
    A ``mix_fn`` with the attribute ``wants_float = True`` is called ``mix_fn(op, params, acts, float_outs)`` with
    the op's float outputs (NCHW, computed on the fast layout path) as well.
    With ``channels_last`` 4-D activations are kept NHWC inside (:func:`layout_plan`).  ``float_type``: the float
    ops run in F32 (default) or as F16 / BF16 ops (:func:`float_type_op`; a mixed model's float layers on BM1684X).
    """
    from . import layout as L

    stop = len(graph.ops) if stop is None else stop
    plan = layout_plan(graph, params, channels_last)
    last = graph.last_use
    keep = set(keep)
    cur = dict(env)
    nhwc: set[str] = set()
    int8_flag: dict[str, Any] = {}  # tensor -> (traced) bool: its producer ran INT8 (mix_fn's flag)
    for i in range(start, stop):
        op = graph.ops[i]
        if op.type == "Input":
            continue
        out_nhwc = op_runs_nhwc(op, plan)
        weights = {r: params[k] for r, k in op.weights}
        ins, round_in = [cur[t] for t in op.inputs], None
        if float_type != "F32":  # F32 -> F16 casts round; a dequantized INT8 producer's output is not rounded
            round_in = [f32_tensor(graph, t, float_type) for t in op.inputs]
            for k, t in enumerate(op.inputs):
                if round_in[k] and t in int8_flag:
                    ins[k] = jnp.where(int8_flag[t], ins[k], round_to_float_type(ins[k], float_type))
                    round_in[k] = False
        outs = run_op_planned(op, weights, ins, [t in nhwc for t in op.inputs], out_nhwc, float_type, round_in)
        if mix_fn is not None:
            acts = [jnp.transpose(cur[t], L.TO_NCHW) if t in nhwc else cur[t] for t in op.inputs]
            if getattr(mix_fn, "wants_float", False):  # it also gets the float outputs (NCHW), e.g. to build on them
                alt = mix_fn(op, params, acts, [jnp.transpose(f, L.TO_NCHW) if out_nhwc else f for f in outs])
            else:
                alt = mix_fn(op, params, acts)
            if alt is not None:
                alt_outs, flag = alt
                outs = [jnp.where(flag, jnp.transpose(a, L.TO_NHWC) if out_nhwc else a, f) for a, f in zip(alt_outs, outs)]
                if float_type != "F32" and op.type not in FLOAT_TYPE_FOLLOWS_INPUT:
                    int8_flag.update((t, flag) for t in op.outputs)
        if float_type != "F32" and op.type in FLOAT_TYPE_FOLLOWS_INPUT and op.inputs and op.inputs[0] in int8_flag:
            int8_flag[op.outputs[0]] = int8_flag[op.inputs[0]]  # a reshape takes its input's type
        for t, v in zip(op.outputs, outs):
            cur[t] = v
            if out_nhwc:
                nhwc.add(t)
            else:
                nhwc.discard(t)
        for t in set(op.inputs):
            if last.get(t, -1) <= i and t not in keep:
                cur.pop(t, None)
                nhwc.discard(t)
    return {t: (jnp.transpose(v, L.TO_NCHW) if t in nhwc else v) for t, v in cur.items()}


#: Samples per step when a CPU forward runs the batch in chunks (``Model.apply``).  Measured on the 2-core
#: machine, Lite0 batch 32: whole batch 169 ms, chunks of 16 / 8 / 4: 142 / 134 / 177 ms (benchmarks/forward.py).
CPU_CHUNK = 8

class Model:
    """A converted model: canonical graphs (per batch size) and float params.

    ``Model.apply(params, inputs, taps=())`` is the pure function returned by :func:`to_jax`.
    """

    def __init__(self, model_or_path, input_shapes=None, *, name_style: str = "tpu_mlir", names_map=None):
        proto, path = load_model(model_or_path)
        shapes = resolve_input_shapes(proto, input_shapes, path)
        self.path = path
        reload = None
        if not isinstance(model_or_path, onnx.ModelProto):  # our own parse: big initializers can be released
            st = os.stat(path)

            def reload(_path=path, _stamp=(st.st_size, st.st_mtime_ns)):
                now = os.stat(_path)
                if (now.st_size, now.st_mtime_ns) != _stamp:
                    raise ModelError(f"model file '{_path}' changed while qsens was using it; rerun with the new file")
                return load_model(_path)[0]

        self.canon = Canonicalizer(proto, path, shapes, name_style, names_map, reload=reload)
        del proto
        self.graph = self.canon.graph(self.canon.deploy_batch)
        self.params = {k: jax.device_put(v) for k, v in self.canon.params.items()}
        if jax.default_backend() == "cpu":
            # one copy of the weights, not two: on CPU the canonicalizer's host arrays become read-only views of the
            # device arrays (zero-copy; measured on the ResNet-50-shaped bignet: -63 MB of its 97 MB of weights)
            self.canon.params = {k: np.asarray(v) for k, v in self.params.items()}
        self._separable: dict[tuple[int, int], bool] = {}

    def graph_at(self, batch: int) -> Graph:
        return self.canon.graph(batch)

    def input_env(self, inputs: Mapping[str, Any] | Sequence[Any] | Any) -> tuple[Graph, dict[str, Any]]:
        g0 = self.graph
        if not isinstance(inputs, Mapping):
            if isinstance(inputs, list | tuple):
                inputs = dict(zip(g0.inputs, inputs))
            else:
                inputs = {g0.inputs[0]: inputs}
        missing = [n for n in g0.inputs if n not in inputs]
        if missing:
            raise ModelError(f"inputs {missing} missing; the model '{self.path}' takes {list(g0.inputs)}.")
        batch = self.canon.deploy_batch
        for name, flag in zip(g0.inputs, self.canon.batch_inputs):
            if flag and np.ndim(inputs[name]):
                batch = int(np.shape(inputs[name])[0])
                break
        g = self.graph_at(batch)
        for name, shp in zip(g.inputs, g.input_shapes):
            got = tuple(np.shape(inputs[name]))
            if got != tuple(shp):
                raise ModelError(f"input '{name}' has shape {list(got)}, the model expects {list(shp)} (batch {batch}); check --input_shapes / preprocessing.")
        env = {n: jnp.asarray(inputs[n]) for n in g.inputs}
        return g, env

    def chunk_for(self, batch: int, chunk: int | None = None) -> int:
        """Samples per step for a forward at ``batch`` (0: the whole batch at once); ``chunk`` is the most per step.

        ``chunk=None`` picks :data:`CPU_CHUNK` on the CPU backend and 0 elsewhere (GPU/TPU want the whole batch).
        Chunking needs a batch-rebindable model whose graph is :func:`batch_separable`; otherwise it is 0.
        On CPU, chunks keep each layer's activations in cache (Lite0 batch 32: 169 -> 134 ms) and results are
        the same per sample (each sample's sums do not depend on the others).
        """
        if chunk is None:
            chunk = CPU_CHUNK if jax.default_backend() == "cpu" else 0
        if not chunk or batch <= chunk or not all(self.canon.batch_inputs):
            return 0
        chunk = -(-batch // -(-batch // chunk))  # as many steps as `chunk` needs, evened out: 10 -> 5+5, not 8+8
        key = (batch, chunk)
        if key not in self._separable:
            try:
                self._separable[key] = batch_separable(self.graph_at(batch), self.graph_at(chunk))
            except ModelError:
                self._separable[key] = False
        return chunk if self._separable[key] else 0

    def apply(self, params, inputs, *, taps: Sequence[str] = (), chunk: int | None = None):
        g, env = self.input_env(inputs)
        taps = tuple(taps)
        tensors = set(g.tensors)
        bad = [t for t in taps if t not in tensors]
        if bad:
            raise ModelError(f"taps {bad[:5]} are not canonical tensors of '{self.path}' (see `qsens ops MODEL`).")
        c = self.chunk_for(g.batch, chunk)
        if c:
            outs_l, taps_l = self._apply_chunked(params, env, g, c, taps)
        else:
            env = run_graph(g, params, env, keep=taps)
            outs_l, taps_l = [env[t] for t in g.outputs], [env[t] for t in taps]
        outs = dict(zip(g.output_names, outs_l))
        if taps:
            return outs, dict(zip(taps, taps_l))
        return outs

    def _apply_chunked(self, params, env, g: Graph, c: int, taps: tuple[str, ...]):
        """``lax.map`` of the graph at batch ``c`` over the batch (zero-padded to a multiple of ``c``)."""
        b = g.batch
        steps = -(-b // c)
        gc = self.graph_at(c)

        def split(x):
            x = jnp.pad(x, [(0, steps * c - b)] + [(0, 0)] * (x.ndim - 1)) if steps * c != b else x
            return x.reshape((steps, c) + x.shape[1:])

        def body(xs):
            e = run_graph(gc, params, dict(xs), keep=taps)
            return [e[t] for t in gc.outputs], [e[t] for t in taps]

        outs, tapped = jax.lax.map(body, {n: split(v) for n, v in env.items()})

        def join(y):
            return y.reshape((steps * c,) + y.shape[2:])[:b]

        return [join(y) for y in outs], [join(y) for y in tapped]


def to_jax(model_or_path, input_shapes=None, *, name_style: str = "tpu_mlir", names_map=None):
    """Convert an ONNX model to ``(apply_fn, params)``.

    ``input_shapes``: TPU-MLIR's ``--input_shapes`` as a list (``[[1,3,224,224]]``, one shape per input) or its
    string, or a dict by input name (``{"input": [1,3,224,224]}``, every input named); ``None`` takes the
    declared shapes with a symbolic leading dim bound to 1 (:func:`qsens.onnx.load.resolve_input_shapes`).
    ``apply_fn(params, inputs, *, taps=())``: ``inputs`` is a dict of input arrays (or one array); the result is a
    dict of graph outputs in graph order, and with ``taps`` (a static tuple of canonical tensor names) a pair
    ``(outputs, tapped)``.  Pure and jit-able: ``jax.jit(apply_fn, static_argnames="taps")``.  The leading
    (batch) dim of the inputs may differ from the deployment batch; the graph is re-derived per batch.
    ``apply_fn.model`` is the :class:`Model` (canonical graph: ``apply_fn.model.graph``).  ``chunk`` (static):
    samples per step on CPU (:meth:`Model.chunk_for`; default :data:`CPU_CHUNK`, 0 = the whole batch at once).
    ``names_map``: ``{canonical name: name}`` renaming ops and tensors (the user's TPU-MLIR names, ``qsens names``).
    """
    m = Model(model_or_path, input_shapes, name_style=name_style, names_map=names_map)

    def apply_fn(params, inputs, *, taps: Sequence[str] = (), chunk: int | None = None):
        return m.apply(params, inputs, taps=taps, chunk=chunk)

    apply_fn.model = m
    apply_fn.graph = m.graph
    return apply_fn, m.params
