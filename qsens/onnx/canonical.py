"""ONNX -> canonical graph (TPU-MLIR Top dialect form).

Steps, all decided from the model and the deployment shapes, never from sample data:

1. Values are classified as *const* (static numpy: integer initializers, shape arithmetic, Constant nodes of
   integer type, anything folded from consts), *weight* (float initializers and Constant nodes, and values
   computed only from weights: they go to ``params``) or *act* (depends on a graph input).
2. Nodes whose inputs are all const/weight are folded on the host (``Shape/Gather/Slice/Concat/Pad/Expand``
   chains become static values; ``Shape`` of an activation is its static shape).  Static input slots
   (Reshape's shape, Clip's bounds, ReduceMean's axes, ...) must resolve to constants.
3. Activation nodes become canonical ops, with TPU-MLIR's canonicalizations:
   * ``Identity`` / ``Dropout`` are removed;
   * onnxsim's fusions (model_transform simplifies the ONNX model before converting it): an ``Add`` of a
     per-channel / one-element constant after a bias-less ``Conv`` becomes its bias (``<Add output>_Conv``), an
     ``Add`` of a bias ``[N]`` / ``[1, N]`` after a 2-D ``MatMul`` makes it a ``Gemm`` (``<Add output>_Gemm``);
   * ``BatchNormalization`` after a ``Conv`` (whose output feeds only the BN) is folded into the Conv
     (float64 arithmetic, stored float32), named ``<BN output>_Conv`` (onnxsim's fuse_bn_into_conv); a lone BN
     becomes a per-channel ``Scale``;
   * a linear 1x1 ``Conv`` that feeds only another ``Conv`` is merged into it (TPU-MLIR's Top canonicalizer
     ``Conv1x1Convkxk2dMerge``, see :func:`_merge_conv1x1`); the merged Conv keeps the second Conv's name;
   * ``Relu`` and ``Clip(0, x)`` are fused into their producer (``do_relu``, ``relu_limit`` = x or -1) when the
     producer supports a fused ReLU and feeds only the ReLU; the fused op takes the ReLU's name
     (TPU-MLIR's ``TopFuseRelu`` moves the ReLU's location onto the producer);
   * ``ReduceMean`` over all spatial axes with ``keepdims=1`` and ``GlobalAveragePool`` become ``AvgPool``.
4. Names: ``tpu_mlir`` style (default) = ``<first ONNX output name>_<ONNX op type>`` as TPU-MLIR's ONNX
   converter names ops (the Input op keeps the input's name); ``onnx`` style = the ONNX output name.
5. Batch: the graph is re-derived per batch size.  A model with a symbolic leading input dim is rebuilt at the
   new batch (as onnxruntime runs it); a fixed-batch model (the usual export for TPU-MLIR, which runs it sample
   by sample) is rebound when the graph allows it, else its ops that are not sample-local run per deployment
   batch (:meth:`Canonicalizer._fixed_batch_graph`, :func:`per_sample_graph`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import numpy_helper

from .. import exe_cache
from ..errors import ModelError
from . import patterns, registry
from .ir import Graph, Op, freeze_attrs, value_fingerprint
from .load import graph_inputs, input_dtype, model_opset

# ONNX op type -> Top op type (identity where absent)
TOP_TYPE = {
    "Gemm": "MatMul",
    "Transpose": "Permute",
    "Flatten": "Reshape",
    "Squeeze": "Reshape",
    "Unsqueeze": "Reshape",
    "BatchNormalization": "Scale",
    "GlobalAveragePool": "AvgPool",
    "AveragePool": "AvgPool",
    "GlobalMaxPool": "MaxPool",
    "ReduceMean": "Reduce",
    "ReduceSum": "Reduce",
    "ReduceMax": "Reduce",
    "ReduceMin": "Reduce",
    "ReduceL2": "Reduce",
    "Clip": "Clip",
}

# producers that take a fused ReLU (TPU-MLIR's SupportFuseRelu trait, restricted to what qsens lowers)
FUSE_RELU = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "BatchNormalization", "Concat", "AveragePool",
             "GlobalAveragePool", "MaxPool", "ReduceMean"}

WEIGHT_ROLES = {
    "Conv": ("input", "filter", "bias"),
    "ConvTranspose": ("input", "filter", "bias"),
    "Gemm": ("input", "filter", "bias"),
    "MatMul": ("input", "filter"),
    "PRelu": ("input", "slope"),
    "BatchNormalization": ("input", "scale", "bias", "mean", "var"),
}

NAME_STYLES = ("tpu_mlir", "onnx")


@dataclasses.dataclass
class _Raw:
    """An activation node before canonicalization."""

    node: onnx.NodeProto
    op_type: str
    attrs: dict[str, Any]
    slots: list[tuple[str, Any]]  # ("act", tensor) | ("weight", key) | ("const", ndarray) | ("none", None)
    outputs: list[str]
    avals: list[jax.ShapeDtypeStruct]
    nodes: list[str]
    name_node: onnx.NodeProto  # the node that gives the canonical name (a fused ReLU, a folded BN)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.asarray(a.f, np.float32)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.asarray(a.i, np.int64)
        if a.name == "value_ints":
            return np.asarray(list(a.ints), np.int64)
    raise ModelError(f"Constant node '{node.name}' has no supported value attribute (sparse/string constants are not supported).")


def _toposort(nodes: Sequence[onnx.NodeProto], known: set[str]) -> list[onnx.NodeProto]:
    avail = set(known)
    out, pending = [], list(nodes)
    while pending:
        progressed, rest = False, []
        for n in pending:
            if all((not i) or i in avail for i in n.input):
                out.append(n)
                avail.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            n = rest[0]
            missing = [i for i in n.input if i and i not in avail]
            raise ModelError(f"node '{n.name}' ({n.op_type}) reads undefined tensor(s) {missing}; the model graph is broken or has a cycle.")
        pending = rest
    return out


def _run_impl(d: registry.OpDef, ins: list, attrs: dict, *, host: bool) -> list:
    if host and d.numpy_ok:
        out = d.impl(np, [None if x is None else np.asarray(x) for x in ins], attrs)
        return [np.asarray(o) for o in out]
    out = d.impl(jnp, [None if x is None else jnp.asarray(x) for x in ins], attrs)
    return [np.asarray(o) for o in out]


#: a model loaded from a file whose initializers hold this many bytes or more releases them after conversion
RELEASE_BYTES = 32 << 20

#: :meth:`Canonicalizer._infer`'s results by exact signature (registry entry, attributes, every input's kind and
#: shape/dtype, constants by value), shared by every build in the process: a model is built at its deployment
#: batch and again at the calibration / search batch, and repeated blocks share shapes (Lite0: 104 distinct of 188
#: inferences over those two builds, ~8 ms per Conv in ``jax.eval_shape``).  Bounded: cleared when full.
_INFER_MEMO: dict[tuple, list] = {}
_INFER_MEMO_MAX = 8192


def _infer_key(d, attrs, slots, avals, params) -> tuple | None:
    """The exact signature of one shape inference, or None when a value in it is not hashable (no memo then)."""
    ins = []
    for kind, ref in slots:
        if kind == "act":
            ins.append(("act", tuple(avals[ref].shape), str(avals[ref].dtype)))
        elif kind == "weight":
            ins.append(("weight", tuple(params[ref].shape), str(params[ref].dtype)))
        else:
            ins.append((kind, value_fingerprint(ref)))
    # the registry entry itself (frozen: its op type, implementation and rules; held, so never confused with a later
    # one), and x64 (it changes dtypes)
    key = (d, bool(jax.config.jax_enable_x64), value_fingerprint(sorted(attrs.items())), tuple(ins))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _infer_note(d, key: tuple | None):
    """Where :meth:`Canonicalizer._infer`'s result for ``key`` persists across processes (None: not kept).  The
    registry entry stands in by its op type and implementation's name: its code is in the cache fingerprint (a
    hash of qsens's sources), the rest of the key is exact values (constants by digest)."""
    if key is None:
        return None
    text = exe_cache.stable_text((d.op_type, d.impl.__module__, d.impl.__qualname__) + key[1:])
    return None if text is None else exe_cache.note_path("shape inference", text)


def _avals_to_note(out) -> list | None:
    """``jax.eval_shape``'s outputs as JSON (None when one is not a plain shape/dtype: not kept)."""
    if not all(isinstance(a, jax.ShapeDtypeStruct) and a.sharding is None for a in out):
        return None
    return [[list(a.shape), np.dtype(a.dtype).str, bool(a.weak_type)] for a in out]


def _avals_from_note(note) -> list | None:
    if not isinstance(note, list):
        return None
    try:
        return [jax.ShapeDtypeStruct(tuple(int(n) for n in shape), np.dtype(dt), weak_type=bool(weak))
                for shape, dt, weak in note]
    except (TypeError, ValueError):
        return None


class Canonicalizer:
    """Builds :class:`Graph` objects (one per batch size) and the float ``params`` of one model."""

    def __init__(self, model: onnx.ModelProto, path: str, deploy_shapes: list[tuple[int, ...]], name_style: str = "tpu_mlir",
                 names_map: dict[str, str] | None = None, reload=None):
        if name_style not in NAME_STYLES:
            raise ModelError(f"--name_style must be one of {NAME_STYLES}, got {name_style!r}")
        self.model, self.path, self.name_style = model, path, name_style
        #: qsens name -> the user's TPU-MLIR name (``qsens names --write-map``), applied to every op and tensor name
        self.names_map = dict(names_map or {})
        self.opset = model_opset(model)
        self.deploy_shapes = [tuple(s) for s in deploy_shapes]
        self.inputs = graph_inputs(model)
        self.params: dict[str, np.ndarray] = {}
        self._graphs: dict[int, Graph] = {}
        known = {v.name for v in self.inputs} | {i.name for i in model.graph.initializer}
        self.nodes = _toposort(model.graph.node, known)
        from .load import declared_shape

        decl = [declared_shape(v) for v in self.inputs]
        self.batch_dims = [not d or not isinstance(d[0], int) for d in decl]
        self.deploy_batch = next((s[0] for s, b in zip(self.deploy_shapes, self.batch_dims) if s and b),
                                 self.deploy_shapes[0][0] if self.deploy_shapes and self.deploy_shapes[0] else 1)
        # A fixed-batch model (no input has a symbolic leading dim: the usual export for TPU-MLIR) runs at another
        # batch sample by sample, as TPU-MLIR runs it: inputs leading with the deployment batch carry the batch.
        self.fixed_batch = not any(self.batch_dims)
        self.batch_inputs = ([bool(s) and s[0] == self.deploy_batch for s in self.deploy_shapes] if self.fixed_batch
                             else list(self.batch_dims))
        self._deploy_avals: dict[str, jax.ShapeDtypeStruct] = {}
        #: ``reload() -> ModelProto`` when the initializers were released (:meth:`_release`), else None
        self._reload = None
        self._merged: dict[tuple, tuple | None] = {}  # _merge_conv1x1's results, shared by the builds
        g = self.graph(self.deploy_batch)  # validates the model, fills params
        if self.names_map:
            _check_renamed(g, self.names_map, path)
        if reload is not None and sum(len(i.raw_data) for i in model.graph.initializer) >= RELEASE_BYTES:
            self._release(reload)

    def _release(self, reload) -> None:
        """Drop the ONNX initializers once the deployment graph holds the canonical weights (``params``).

        The parsed model keeps every initializer (protobuf frees its arena only as a whole): a second copy of the
        weights for the whole run (the ResNet-50-shaped bignet: 97 MB, 63 MB of RSS).  Keep a copy of the model
        without them; a graph at another batch (:meth:`graph`) reads the initializers again with ``reload`` (the
        caller's: :class:`~qsens.onnx.convert.Model` re-reads its file, and checks that it did not change)."""
        names = {i.name for i in self.model.graph.initializer}
        self.model.graph.ClearField("initializer")
        small = onnx.ModelProto.FromString(self.model.SerializeToString())  # a new arena: the old one goes
        order = {id(n): k for k, n in enumerate(self.model.graph.node)}
        pos = [order[id(n)] for n in self.nodes]
        self.model = small
        self.inputs = [v for v in small.graph.input if v.name not in names]
        self.nodes = [small.graph.node[k] for k in pos]  # the same topological order
        self._reload = reload

    # ---------------------------------------------------------------------------------------------
    def shapes_at(self, batch: int) -> list[tuple[int, ...]]:
        """Input shapes at ``batch``: the inputs that carry the batch (:attr:`batch_inputs`: a symbolic leading dim,
        or for a fixed-batch model a leading dim equal to the deployment batch) take it."""
        if batch == self.deploy_batch:
            return list(self.deploy_shapes)
        if not any(self.batch_inputs):
            raise ModelError(f"'{self.path}': no input of shapes {self.deploy_shapes} carries a batch dim; "
                             f"it cannot run at batch {batch}")
        return [(batch,) + s[1:] if (s and b) else s for s, b in zip(self.deploy_shapes, self.batch_inputs)]

    def graph(self, batch: int) -> Graph:
        if batch not in self._graphs:
            if self.fixed_batch and batch != self.deploy_batch:
                self._graphs[batch] = self._fixed_batch_graph(batch)
            else:
                self._graphs[batch] = self._build(self.shapes_at(batch), batch)
        return self._graphs[batch]

    def _fixed_batch_graph(self, batch: int) -> Graph:
        """A fixed-batch model at ``batch``: rebound when the graph allows it, else run sample by sample.

        Rebinding builds the graph at ``batch`` with every Reshape target whose leading entry is the deployment
        batch (and whose input and output lead with it there, e.g. ``[1, -1]``) given the new batch instead, and
        keeps it only if it is the deployment graph with the batch swapped: same ops, every tensor
        ``(batch,) + its deployment shape[1:]``, no op normalizing over axis 0 (:func:`~.ir.batch_separable`).
        Otherwise each op that is not sample-local runs per deployment-batch chunk (:func:`per_sample_graph`)."""
        from .ir import batch_separable

        g0 = self.graph(self.deploy_batch)
        try:
            g = self._build(self.shapes_at(batch), batch, rebind=True)
            if batch_separable(g, g0):
                return g
        except ModelError:
            pass
        return per_sample_graph(g0, batch, self.batch_inputs, {k: np.shape(v) for k, v in self.params.items()}, self.path)

    # ---------------------------------------------------------------------------------------------
    def _build(self, shapes: list[tuple[int, ...]], batch: int, rebind: bool = False) -> Graph:
        opset = self.opset
        vals: dict[str, tuple[str, Any]] = {}
        params: dict[str, np.ndarray] = {}
        inits = self.model.graph.initializer if self._reload is None else self._reload().graph.initializer
        for init in inits:
            a = numpy_helper.to_array(init)
            if _is_float(a):
                a = a.astype(np.float32)
                vals[init.name] = ("weight", init.name)
                params[init.name] = a
            else:
                vals[init.name] = ("const", a)
        in_ops = []
        for v, shp in zip(self.inputs, shapes):
            dt = input_dtype(v)
            vals[v.name] = ("act", v.name)
            in_ops.append(Op(name=v.name, type="Input", inputs=(), outputs=(v.name,), out_shapes=(tuple(shp),),
                             out_dtypes=(dt.name,), onnx_type="Input"))
        avals: dict[str, jax.ShapeDtypeStruct] = {
            v.name: jax.ShapeDtypeStruct(tuple(s), input_dtype(v)) for v, s in zip(self.inputs, shapes)
        }
        raws: list[_Raw] = []

        def value(name: str):
            kind, ref = vals[name]
            return ref if kind == "const" else params[ref]

        for node in self.nodes:
            nname = node.name or (node.output[0] if node.output else node.op_type)
            if node.op_type == "Constant":
                a = _constant_node_value(node)
                if _is_float(a):
                    params[node.output[0]] = a.astype(np.float32)
                    vals[node.output[0]] = ("weight", node.output[0])
                else:
                    vals[node.output[0]] = ("const", a)
                continue
            d = registry.lookup(node.op_type, node_name=nname, opset=opset, domain=node.domain)
            attrs = registry.node_attrs(node, opset)
            attrs["_opset"] = opset
            attrs["_n_outputs"] = len(node.output)
            kinds = []
            for k, i in enumerate(node.input):
                if not i:
                    kinds.append("none")
                    continue
                if i not in vals:
                    raise ModelError(f"node '{nname}' ({node.op_type}) reads undefined tensor '{i}'.")
                kind = vals[i][0]
                if k in d.static and kind == "act":
                    raise ModelError(
                        f"node '{nname}' ({node.op_type}) input {k} ('{i}') must be a constant (it sets a shape/axes/bounds) "
                        "but is computed from the model input at run time; qsens needs static shapes: re-export with "
                        "constant folding or pass --input_shapes."
                    )
                kinds.append(kind)
            if node.op_type == "Shape" and kinds[0] == "act":
                out = d.impl(np, [np.empty(avals[node.input[0]].shape, np.int8)], attrs)
                vals[node.output[0]] = ("const", out[0])
                continue
            if node.op_type == "Size" and kinds[0] == "act":
                vals[node.output[0]] = ("const", np.asarray(int(np.prod(avals[node.input[0]].shape)), np.int64))
                continue
            if "act" not in kinds:
                ins = [None if kd == "none" else value(i) for kd, i in zip(kinds, node.input)]
                try:
                    outs = _run_impl(d, ins, attrs, host=True)
                except Exception as e:  # noqa: BLE001
                    raise ModelError(f"node '{nname}' ({node.op_type}): constant folding failed: {e}") from None
                derived_from_weight = "weight" in kinds
                for o, a in zip(node.output, outs):
                    if not o:
                        continue
                    if derived_from_weight and _is_float(a):
                        params[o] = a.astype(np.float32)
                        vals[o] = ("weight", o)
                    else:
                        vals[o] = ("const", a)
                continue
            # activation node
            slots: list[tuple[str, Any]] = []
            for k, (kd, i) in enumerate(zip(kinds, node.input)):
                if kd == "none":
                    slots.append(("none", None))
                elif kd == "act":
                    slots.append(("act", vals[i][1]))
                elif kd == "weight" and k not in d.static:
                    slots.append(("weight", vals[i][1]))
                else:
                    slots.append(("const", np.asarray(value(i))))
            if rebind and node.op_type == "Reshape":
                self._rebind_reshape(node, slots, avals, batch)
            out_avals = self._infer(d, attrs, slots, avals, params, nname, node.op_type)
            raw = _Raw(node, node.op_type, attrs, slots, list(node.output), out_avals, [nname], node)
            raws.append(raw)
            for o, av in zip(node.output, out_avals):
                if o:
                    vals[o] = ("act", o)
                    avals[o] = av
        graph_outs = [o.name for o in self.model.graph.output]
        for o in graph_outs:
            if vals.get(o, ("?",))[0] != "act":
                raise ModelError(f"graph output '{o}' does not depend on the model input (it is a constant); qsens cannot quantize it.")
        if batch == self.deploy_batch:
            self._deploy_avals = dict(avals)
        ops, alias, params = self._canonicalize(raws, graph_outs, params, avals)
        ops = in_ops + ops
        out_tensors = tuple(alias.get(o, o) for o in graph_outs)
        if not self.params:
            self.params = params
        return Graph(
            ops=tuple(ops), inputs=tuple(v.name for v in self.inputs), outputs=out_tensors,
            output_names=tuple(graph_outs), input_shapes=tuple(tuple(s) for s in shapes), batch=batch,
            opset=opset, model_path=self.path,
        )

    def _rebind_reshape(self, node: onnx.NodeProto, slots: list, avals: dict, batch: int) -> None:
        """Give a Reshape target's leading entry the new ``batch`` where it is the deployment batch ``B``: the
        input and the output lead with ``B`` at deployment and the input leads with ``batch`` now (a fixed-batch
        export's ``[1, -1]`` / ``[1, 1280]``).  Per sample this is the deployment reshape."""
        if len(slots) < 2 or slots[0][0] != "act" or slots[1][0] != "const":
            return
        B = self.deploy_batch
        d_in, d_out = self._deploy_avals.get(node.input[0]), self._deploy_avals.get(node.output[0])
        target = np.asarray(slots[1][1])
        if d_in is None or d_out is None or target.ndim != 1 or not target.size or int(target[0]) != B:
            return
        cur = tuple(avals[slots[0][1]].shape)
        if not d_in.shape or not d_out.shape or d_in.shape[0] != B or d_out.shape[0] != B:
            return
        if not cur or cur[0] != batch or cur[1:] != tuple(d_in.shape[1:]):
            return
        t = target.copy()
        t[0] = batch
        slots[1] = ("const", t)

    # ---------------------------------------------------------------------------------------------
    @staticmethod
    def _infer(d, attrs, slots, avals, params, nname, op_type):
        key = _infer_key(d, attrs, slots, avals, params)
        hit = _INFER_MEMO.get(key) if key is not None else None
        if hit is not None:
            return list(hit)
        note = _infer_note(d, key)
        out = _avals_from_note(exe_cache.load_note(note))
        if out is None:
            out = Canonicalizer._eval_shape(d, attrs, slots, avals, params, nname, op_type)
            if note is not None and (kept := _avals_to_note(out)) is not None:
                exe_cache.write_note(note, kept)
        if key is not None:
            if len(_INFER_MEMO) >= _INFER_MEMO_MAX:
                _INFER_MEMO.clear()
            _INFER_MEMO[key] = list(out)
        return out

    @staticmethod
    def _eval_shape(d, attrs, slots, avals, params, nname, op_type):
        acts = [ref for kind, ref in slots if kind == "act"]
        wkeys = [ref for kind, ref in slots if kind == "weight"]

        def f(act_vals, w_vals):
            ai, wi = iter(act_vals), iter(w_vals)
            ins = []
            for kind, ref in slots:
                if kind == "act":
                    ins.append(next(ai))
                elif kind == "weight":
                    ins.append(next(wi))
                elif kind == "const":
                    ins.append(ref)
                else:
                    ins.append(None)
            return d.impl(jnp, ins, attrs)

        try:
            out = jax.eval_shape(
                f, [avals[a] for a in acts], [jax.ShapeDtypeStruct(params[k].shape, params[k].dtype) for k in wkeys]
            )
        except registry.UnsupportedOpError:
            raise
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            shapes = [tuple(avals[a].shape) for a in acts]
            raise ModelError(f"node '{nname}' ({op_type}) cannot run on input shapes {shapes}: {msg}") from None
        return list(out)

    # ---------------------------------------------------------------------------------------------
    def _canonicalize(self, raws: list[_Raw], graph_outs: list[str], params: dict, avals: dict):
        alias: dict[str, str] = {}
        # 1. remove Identity / Dropout
        kept: list[_Raw] = []
        for r in raws:
            if r.op_type in ("Identity", "Dropout") and r.slots[0][0] == "act":
                alias[r.outputs[0]] = r.slots[0][1]
                continue
            kept.append(r)

        def res(t):
            while t in alias:
                t = alias[t]
            return t

        for r in kept:
            r.slots = [(k, res(v)) if k == "act" else (k, v) for k, v in r.slots]
        graph_out_set = {res(o) for o in graph_outs}
        users: dict[str, list[_Raw]] = {}
        for r in kept:
            for k, v in r.slots:
                if k == "act":
                    users.setdefault(v, []).append(r)
        producer = {o: r for r in kept for o in r.outputs if o}
        dead: set[int] = set()

        def sole_user(tensor: str, r: _Raw) -> bool:
            return tensor not in graph_out_set and len(users.get(tensor, [])) == 1 and users[tensor][0] is r

        # 1b. onnxsim's fuse_add_bias_into_conv / fuse_matmul_add_bias_into_gemm (model_transform simplifies the
        #     ONNX model first): the fused op takes the Add's output, named <Add output>_Conv / _Gemm; and TPU-MLIR's
        #     MatMulWithBias for a rank > 2 activation, named after the Add (<Add output>_Add)
        for r in kept:
            if r.op_type != "Add" or len(r.slots) != 2:
                continue
            kinds = (r.slots[0][0], r.slots[1][0])
            if kinds[0] == "act" and kinds[1] in ("weight", "const"):
                a, wslot, rev = r.slots[0][1], r.slots[1], False
            elif kinds[1] == "act" and kinds[0] in ("weight", "const"):  # Add(bias, x): onnxsim leaves it
                a, wslot, rev = r.slots[1][1], r.slots[0], True
            else:
                continue
            p = producer.get(a)
            if p is None or id(p) in dead or not sole_user(a, r):
                continue
            bias = np.asarray(params[wslot[1]] if wslot[0] == "weight" else wslot[1])
            if not _is_float(bias):
                continue
            fused = _add_bias_fusion(p, bias, params, avals, top_only=rev)
            if fused is None:
                continue
            op_type, b, name_type = fused if len(fused) == 3 else (*fused, fused[0])
            bk = f"{r.outputs[0]}@fused_bias"
            params[bk] = b.astype(np.float32)
            if op_type == "Gemm":
                p.op_type = "Gemm"
                p.attrs = {**{k: v for k, v in p.attrs.items() if k.startswith("_")},
                           "alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
            p.slots = p.slots[:2] + [("weight", bk)]
            p.extra["name_type"] = name_type
            old_out = p.outputs[0]
            p.outputs = [r.outputs[0]]
            p.nodes.append(r.nodes[0])
            producer[r.outputs[0]] = p
            producer.pop(old_out, None)
            dead.add(id(r))
        kept = [r for r in kept if id(r) not in dead]

        # 2. fold BN into Conv
        for r in kept:
            if r.op_type != "BatchNormalization" or r.slots[0][0] != "act":
                continue
            p = producer.get(r.slots[0][1])
            if p is None or p.op_type != "Conv" or id(p) in dead or p.extra.get("relu") or not sole_user(r.slots[0][1], r):
                continue
            if any(k not in ("weight", "const") for k, _ in r.slots[1:5]) or p.slots[1][0] != "weight":
                continue
            if len(p.slots) > 2 and p.slots[2][0] not in ("weight", "none"):
                continue
            get = lambda s: np.asarray(params[s[1]] if s[0] == "weight" else s[1], np.float64)  # noqa: E731
            scale, bias, mean, var = (get(s) for s in r.slots[1:5])
            eps = float(r.attrs.get("epsilon", 1e-5))
            inv = scale / np.sqrt(var + eps)
            w = np.asarray(params[p.slots[1][1]], np.float64)
            b = np.asarray(params[p.slots[2][1]], np.float64) if len(p.slots) > 2 and p.slots[2][0] == "weight" else 0.0
            wk, bk = f"{p.slots[1][1]}@bn", f"{r.outputs[0]}@bn_bias"
            params[wk] = (w * inv.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            params[bk] = ((b - mean) * inv + bias).astype(np.float32)
            p.slots = [p.slots[0], ("weight", wk), ("weight", bk)]
            alias_out = r.outputs[0]
            old_out = p.outputs[0]
            p.outputs = [alias_out]
            avals[alias_out] = avals[alias_out]
            p.nodes.append(r.nodes[0])  # name: <BN output>_Conv (onnxsim's fuse_bn_into_conv renames the Conv)
            producer[alias_out] = p
            producer.pop(old_out, None)
            dead.add(id(r))
        kept = [r for r in kept if id(r) not in dead]

        # 2a. onnx_opt's HardSigmoid / HardSwish patterns (model_transform runs them on the simplified model)
        #     and the SiLU canonicalizer (Mul(x, Sigmoid(x))): fused ops that compute their nodes unchanged
        kept = patterns.fuse_onnx_opt_patterns(kept, params, sole_user)
        _reindex(kept, users, producer)
        kept = patterns.fuse_silu(kept, producer, sole_user)
        _reindex(kept, users, producer)

        # 2b. fuse a zero constant Pad of the spatial dims into the Conv that reads it (TPU-MLIR's pad fusion)
        for r in kept:
            if r.op_type != "Conv" or r.slots[0][0] != "act" or r.attrs.get("auto_pad", "NOTSET") != "NOTSET":
                continue
            p = producer.get(r.slots[0][1])
            if p is None or p.op_type != "Pad" or id(p) in dead or not sole_user(r.slots[0][1], r):
                continue
            pads = _zero_spatial_pads(p)
            if pads is None or p.slots[0][0] != "act":
                continue
            n = len(pads) // 2
            old = list(r.attrs.get("pads") or (0,) * (2 * n))
            r.attrs["pads"] = tuple(int(a + b) for a, b in zip(old, pads))
            r.slots[0] = p.slots[0]
            r.nodes.insert(0, p.nodes[0])
            users.setdefault(p.slots[0][1], []).append(r)
            users[p.slots[0][1]] = [u for u in users[p.slots[0][1]] if u is not p]
            dead.add(id(p))
        kept = [r for r in kept if id(r) not in dead]

        # 2c. merge a linear 1x1 Conv into the Conv that reads it (TPU-MLIR's Conv1x1Convkxk2dMerge)
        for r in kept:
            if r.op_type != "Conv" or id(r) in dead or r.slots[0][0] != "act":
                continue
            p = producer.get(r.slots[0][1])
            if p is None or p.op_type != "Conv" or id(p) in dead or not sole_user(r.slots[0][1], r):
                continue
            # the merge depends on the weights and the kernels' geometry, not on the batch: computed once per model
            # (a graph at another batch reuses it; it is ~1 s of Lite0's float32 sums per build)
            mkey = (p.outputs[0], r.outputs[0], p.slots[1][1], r.slots[1][1])
            if mkey not in self._merged:
                self._merged[mkey] = _merge_conv1x1(p, r, params, avals)
            merged = self._merged[mkey]
            if merged is None:
                continue
            wk, bk = f"{self._name(r.outputs[0], 'Conv')}_merge_filter_weight", f"{self._name(r.outputs[0], 'Conv')}_merge_bias_weight"
            params[wk] = merged[0]
            r.slots = [p.slots[0], ("weight", wk)]
            if merged[1] is not None:
                params[bk] = merged[1]
                r.slots.append(("weight", bk))
            r.nodes[:0] = p.nodes
            x = p.slots[0][1]
            users[x] = [r if u is p else u for u in users.get(x, [])]
            producer.pop(p.outputs[0], None)
            dead.add(id(p))
        kept = [r for r in kept if id(r) not in dead]

        # 3. fuse Relu / Clip(0, x) into the producer
        for r in kept:
            if id(r) in dead or r.slots[0][0] != "act":
                continue
            limit = None
            if r.op_type == "Relu":
                limit = -1.0
            elif r.op_type == "Clip":
                lo, hi = _clip_bounds(r)
                if lo is not None and float(lo) == 0.0:
                    limit = -1.0 if hi is None else float(hi)
            if limit is None:
                continue
            r.extra["relu_limit"] = limit
            t = r.slots[0][1]
            p = producer.get(t)
            if p is None or id(p) in dead or p.op_type not in FUSE_RELU or p.extra.get("relu") or not sole_user(t, r):
                continue
            if p.op_type == "ReduceMean" and not _is_spatial_mean(p):
                continue
            p.extra["relu"] = True
            p.extra["relu_limit"] = limit
            p.extra.pop("name_type", None)
            old_out = p.outputs[0]
            p.outputs = [r.outputs[0]]
            p.nodes.append(r.nodes[0])
            p.name_node = r.node
            producer[r.outputs[0]] = p
            producer.pop(old_out, None)
            dead.add(id(r))
        kept = [r for r in kept if id(r) not in dead]

        # 3b. Top types of constant-operand ops, Resize and ConvTranspose (AddConst, MulConst, Upsample, ...), then
        #     the Top canonicalizers that merge MulConst / AddConst / Scale chains
        patterns.assign_top_types(kept, params, avals)
        _reindex(kept, users, producer)
        kept = patterns.merge_top(kept, params, producer, sole_user)

        # 4. emit canonical ops
        ops = []
        for r in kept:
            ops.append(self._emit(r, params, avals))
        # rename tensors to canonical names
        rename = {}
        for r, op in zip(kept, ops):
            for o, t in zip(r.outputs, op.outputs):
                if o:
                    rename[o] = t
        final = []
        for op in ops:
            new_in = tuple(rename.get(t, t) for t in op.inputs)
            final.append(dataclasses.replace(op, inputs=new_in))
        out_alias = {o: rename.get(res(o), res(o)) for o in graph_outs}
        used = set()
        for op in final:
            for _role, v in op.weights:
                used.add(v)
        params = {k: v for k, v in params.items() if k in used}
        return final, out_alias, params

    def _name(self, onnx_out: str, onnx_type: str) -> str:
        name = onnx_out if self.name_style == "onnx" else f"{onnx_out}_{onnx_type}"
        return self.names_map.get(name, name)

    def _emit(self, r: _Raw, params, avals) -> Op:
        roles = WEIGHT_ROLES.get(r.op_type, ())
        inputs: list[str] = []
        weights: list[tuple[str, str]] = []
        consts: list[tuple[str, Any]] = []
        slots: list[tuple[str, Any]] = []
        for k, (kind, ref) in enumerate(r.slots):
            role = roles[k] if k < len(roles) else f"in{k}"
            if kind == "act":
                slots.append(("act", len(inputs)))
                inputs.append(ref)
            elif kind == "weight":
                slots.append(("weight", role))
                weights.append((role, ref))
            elif kind == "const":
                slots.append(("const", role))
                consts.append((role, ref))
            else:
                slots.append(("none", ""))
        weights.extend(r.extra.get("extra_weights", ()))  # INT8-only parameters (e.g. a Scale's q_scale/q_bias)
        attrs = {k: v for k, v in r.attrs.items() if not isinstance(v, np.ndarray)}
        attrs.update(r.extra.get("top_attrs", {}))
        top_type = TOP_TYPE.get(r.op_type, r.op_type)
        x_aval = avals.get(inputs[0]) if inputs else None
        conv_src = r.attrs if r.op_type == "Conv" else r.extra.get("conv_attrs")  # a merged Conv: its own attrs
        if conv_src is not None:
            from .ops.conv import conv_attrs

            wk = dict(weights).get("filter") or dict(weights).get("q_filter")
            w_shape = params[wk].shape if wk is not None else None
            if w_shape is not None and x_aval is not None and len(w_shape) == 4:
                k_, s_, p_, d_, g_ = conv_attrs(conv_src, x_aval.shape, w_shape)
                attrs.update(kernel_shape=k_, strides=s_, dilations=d_, group=g_, auto_pad="NOTSET",
                             pads=(p_[0][0], p_[1][0], p_[0][1], p_[1][1]))
        elif r.op_type in ("MaxPool", "AveragePool") and x_aval is not None and x_aval.ndim == 4:
            from .ops.pool import pool_geometry

            k_, s_, d_, p_, _ = pool_geometry(r.attrs, x_aval.shape[2:])
            attrs.update(strides=s_, dilations=d_, kernel_shape=k_, auto_pad="NOTSET")
            attrs["canonical_pads"] = (p_[0][0], p_[1][0], p_[0][1], p_[1][1])
            if r.op_type == "MaxPool" or not attrs.get("count_include_pad", 0):
                # the ceil_mode extension becomes explicit end padding (never counted / never the max)
                attrs.update(pads=attrs["canonical_pads"], ceil_mode=0)
        elif (r.op_type == "GlobalAveragePool" or (r.op_type == "ReduceMean" and _is_spatial_mean(r))) and x_aval is not None:
            top_type = "AvgPool"
            attrs.update(kernel_shape=tuple(x_aval.shape[2:]), strides=(1,) * (x_aval.ndim - 2),
                         canonical_pads=(0,) * (2 * (x_aval.ndim - 2)), count_include_pad=1, global_pool=True)
        elif r.op_type == "GlobalMaxPool" and x_aval is not None:
            attrs.update(kernel_shape=tuple(x_aval.shape[2:]), strides=(1,) * (x_aval.ndim - 2),
                         canonical_pads=(0,) * (2 * (x_aval.ndim - 2)), global_pool=True)
        if "top_type" in r.extra:
            top_type = r.extra["top_type"]
        elif r.op_type in ("Relu", "Clip") and "relu_limit" in r.extra:
            top_type = "Relu"
            attrs["relu_limit"] = r.extra["relu_limit"]
        if r.extra.get("relu"):
            attrs["do_relu"] = True
            attrs["relu_limit"] = r.extra["relu_limit"]
        elif top_type != "Relu":
            attrs.setdefault("do_relu", False)
        name_out = r.outputs[0]
        name_type = r.extra.get("name_type") or r.name_node.op_type
        name = self._name(name_out, name_type)
        outs = [name] + [self._name(o, name_type) for o in r.outputs[1:] if o]
        out_avals = [avals[o] for o in r.outputs if o]
        return Op(
            name=name, type=top_type, inputs=tuple(inputs), outputs=tuple(outs), weights=tuple(weights),
            attrs=freeze_attrs(attrs), out_shapes=tuple(tuple(a.shape) for a in out_avals),
            out_dtypes=tuple(np.dtype(a.dtype).name for a in out_avals), onnx_nodes=tuple(r.nodes),
            onnx_type=r.op_type, consts=tuple(consts), slots=tuple(slots),
        )


def _check_renamed(g: Graph, names_map: dict[str, str], path: str) -> None:
    """A names map (``--names_map``) must rename at least one op and leave every tensor name unique."""
    tensors = g.tensors
    if not set(names_map.values()) & set(tensors):
        raise ModelError(f"--names_map renames none of the {len(tensors)} tensors of '{path}'; write it for this model "
                         "with `qsens names MODEL --mlir MODEL.mlir --write-map FILE` (same --name_style)")
    seen: set[str] = set()
    for t in tensors:
        if t in seen:
            raise ModelError(f"--names_map gives two tensors of '{path}' the name {t!r}; fix the map")
        seen.add(t)


def _reindex(kept: list[_Raw], users: dict, producer: dict) -> None:
    """Rebuild the users / producer maps of ``kept`` in place (after fusions replaced nodes)."""
    users.clear()
    producer.clear()
    for r in kept:
        for k, v in r.slots:
            if k == "act":
                users.setdefault(v, []).append(r)
        for o in r.outputs:
            if o:
                producer[o] = r


def _clip_bounds(r: _Raw):
    lo = hi = None
    if len(r.slots) > 1:
        if r.slots[1][0] == "const":
            lo = float(np.asarray(r.slots[1][1]).reshape(-1)[0])
        if len(r.slots) > 2 and r.slots[2][0] == "const":
            hi = float(np.asarray(r.slots[2][1]).reshape(-1)[0])
    else:
        lo, hi = r.attrs.get("min"), r.attrs.get("max")
        # opset < 11 defaults are +-FLT_MAX
        if lo is not None and lo <= -3.0e38:
            lo = None
        if hi is not None and hi >= 3.0e38:
            hi = None
    return lo, hi


def _zero_spatial_pads(p: _Raw):
    """Spatial (begin..., end...) pads of a constant-zero, non-negative Pad on NC..., else None."""
    if p.attrs.get("mode", "constant") != "constant":
        return None
    if len(p.slots) > 1 and p.slots[1][0] == "const":
        pads = [int(v) for v in np.asarray(p.slots[1][1]).reshape(-1)]
        if len(p.slots) > 2 and p.slots[2][0] == "const" and np.asarray(p.slots[2][1]).size:
            if float(np.asarray(p.slots[2][1]).reshape(-1)[0]) != 0.0:
                return None
        if len(p.slots) > 3 and p.slots[3][0] != "none":
            return None
    elif p.attrs.get("pads") is not None:
        pads = [int(v) for v in p.attrs["pads"]]
        if float(p.attrs.get("value", 0.0)) != 0.0:
            return None
    else:
        return None
    rank = len(pads) // 2
    if rank < 3 or any(v < 0 for v in pads) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return None
    return tuple(pads[2:rank] + pads[rank + 2 :])


def _is_spatial_mean(r: _Raw) -> bool:
    if r.op_type == "GlobalAveragePool":
        return True
    if r.op_type != "ReduceMean" or not r.attrs.get("keepdims", 1):
        return False
    rank = len(r.avals[0].shape)
    if rank < 3:
        return False
    from .ops.nn import reduce_axes

    ins = [None] + [np.asarray(s[1]) if s[0] == "const" else None for s in r.slots[1:]]
    axes = reduce_axes(ins, r.attrs, rank)
    return axes == tuple(range(2, rank))


#: TPU-MLIR refuses the merge when the merged filter would hold this many times more elements than the two
#: filters together (``(float)E*C*K*K / (E*D*K*K + C*D) > 20``: Conv1x1Convkxk2dMerge's guard)
MERGE_MAX_GROWTH = 20.0


def _conv_geometry(r: _Raw, w_shape, x_shape):
    from .ops.conv import conv_attrs

    k, s, p, d, g = conv_attrs(r.attrs, x_shape, w_shape)
    return tuple(k), tuple(s), tuple(v for pp in p for v in pp), tuple(d), g


def _merge_conv1x1(p: _Raw, r: _Raw, params, avals):
    """TPU-MLIR 1.23's ``Conv1x1Convkxk2dMerge`` (Top canonicalizer, lib/Dialect/Top/Canonicalize/Conv.cpp) on the
    Conv pair ``p`` (1x1) -> ``r``: the merged ``(filter, bias or None)`` as float32, else None.

    Arithmetic (bit-identical to the ``top_f32_all_weight.npz`` model_transform.py writes, checked on Lite0's two
    merges, 1.47 M filter values and 1,376 biases: float64 differs in 91 % of them and moved 1 INT8 weight and 3
    int16 biases of the head conv): every value is a float32 sum over ``d`` in ascending order of float32 products,
    ``w[e,c,u,v] = ((0 + W_r[e,0,u,v]*W_p[0,c]) + W_r[e,1,u,v]*W_p[1,c]) + ...``; the bias is the same float32 sum
    over ``d`` (then ``u, v``) of ``W_r[e,d,u,v]*b_p[d]``, with ``b_r`` added last.

    TPU-MLIR's conditions: ``p`` is a 1x1 Conv whose output has one use (``r``; a graph output is a use), both
    have group 1, no padding and no fused activation (a ReLU after ``r`` is fused after the merge: the
    canonicalizer visits ``r`` before its ReLU), and the merged filter is at most :data:`MERGE_MAX_GROWTH` times
    the two filters.  Strides and dilations of ``r`` are kept; bias = ``b_r + sum_{d,u,v} W_r[e,d,u,v] * b_p[d]``.
    Two cases TPU-MLIR 1.23 merges into a *broken* model are not merged here (checked with its interpreter):
    a strided ``p`` (the stride is dropped: wrong output shape) and a non-square kernel of ``r`` (its code assumes
    K x K: "size does not match for tensor ..._merge_filter_weight"; a 1-D kernel k becomes (k, 1) there)."""
    if p.extra.get("relu") or r.extra.get("relu"):
        return None
    if p.slots[1][0] != "weight" or r.slots[1][0] != "weight":
        return None
    if any(s[0] not in ("weight", "none") for s in p.slots[2:3] + r.slots[2:3]) or len(p.slots) > 3 or len(r.slots) > 3:
        return None
    w1 = np.asarray(params[p.slots[1][1]], np.float64)
    w2 = np.asarray(params[r.slots[1][1]], np.float64)
    if w1.ndim != w2.ndim or w1.ndim not in (3, 4):
        return None
    x1, x2 = avals[p.slots[0][1]].shape, avals[r.slots[0][1]].shape
    k1, s1, pad1, _, g1 = _conv_geometry(p, w1.shape, x1)
    k2, _, pad2, _, g2 = _conv_geometry(r, w2.shape, x2)
    if set(k1) != {1}:
        return None
    if g1 != 1 or g2 != 1 or any(pad1) or any(pad2) or set(s1) != {1}:
        return None
    if (len(k2) == 2 and k2[0] != k2[1]) or (len(k2) == 1 and k2[0] != 1):
        return None
    E, D = w2.shape[:2]
    C = w1.shape[1]
    kk = int(np.prod(k2))
    if np.float32(E * C * kk) / np.float32(E * D * kk + C * D) > MERGE_MAX_GROWTH:
        return None
    w1m = w1.astype(np.float32).reshape(D, C)
    w2f = w2.astype(np.float32).reshape(E, D, kk)
    w = _merged_filter(w2f, w1m).reshape((E, C) + w2.shape[2:])
    b1 = np.asarray(params[p.slots[2][1]], np.float32) if len(p.slots) > 2 and p.slots[2][0] == "weight" else None
    b2 = np.asarray(params[r.slots[2][1]], np.float32) if len(r.slots) > 2 and r.slots[2][0] == "weight" else None
    if b1 is None and b2 is None:
        return w, None
    b = np.zeros(E, np.float32)
    if b1 is not None:
        b1 = b1.reshape(D)
        for d in range(D):
            for k in range(kk):
                b += w2f[:, d, k] * b1[d]
    if b2 is not None:
        b += b2.reshape(E)
    return w, b


def _merged_filter(w2f: np.ndarray, w1m: np.ndarray) -> np.ndarray:
    """``w[e, c, k] = sum_d w2f[e, d, k] * w1m[d, c]`` in float32, ``d`` ascending, one rounding per product and per
    add (no FMA), as TPU-MLIR.  Memory-bound NumPy (Lite0's two merges: ~0.5 s), so the result is kept beside
    qsens's executables, keyed by the exact operands (:func:`qsens.exe_cache.blob_path`; recomputed when the cache
    is off or the file is bad)."""
    (E, D, kk), C = w2f.shape, w1m.shape[1]
    path = exe_cache.blob_path("conv1x1-merge: float32 sum over d ascending", w2f, w1m)
    w = exe_cache.load_blob(path, (E, C, kk), np.float32)
    if w is None:
        w = np.zeros((E, C, kk), np.float32)
        for d in range(D):
            w += w2f[:, d, None, :] * w1m[d, None, :, None]
        exe_cache.write_blob(path, w)
    return w


def _add_bias_fusion(p: _Raw, bias: np.ndarray, params, avals, top_only: bool = False):
    """onnxsim's ``fuse_add_bias_into_conv`` / ``fuse_matmul_add_bias_into_gemm`` (onnxoptimizer) on ``p`` (the
    producer of the Add's first input) and the Add's constant second input: ``(op type, bias [N])`` or None.

    Conv without bias: a one-element bias (broadcast to every channel), or a bias of rank ``r`` with
    ``rank - 1 <= r <= rank`` whose only non-1 dim is the channel dim (``[M,1,1]``, ``[1,M,1,1]``).
    MatMul of a rank-2 activation by a rank-2 weight: a bias ``[N]`` or ``[1,N]`` (``[M,N]`` rows are not
    per-channel and are left to the Add)."""
    if p.slots[0][0] != "act" or p.slots[1][0] != "weight" or p.extra.get("relu"):
        return None
    w = params[p.slots[1][1]]
    if top_only:  # only TPU-MLIR's own MatMulWithBias (any operand order, any activation rank), named after the Add
        if p.op_type != "MatMul" or len(p.slots) != 2 or np.ndim(w) != 2:
            return None
        n = int(np.shape(w)[1])
        if bias.size != n or bias.shape[-1:] != (n,):
            return None
        return "Gemm", bias.reshape(n).astype(np.float64), "Add"
    if p.op_type == "Conv" and len(p.slots) == 2:
        m, rank = int(w.shape[0]), w.ndim
        if bias.ndim > rank:
            return None
        if bias.size == 1:
            return "Conv", np.full(m, float(bias.reshape(-1)[0]), np.float64)
        if rank > bias.ndim + 1 or bias.size != m or bias.ndim < 2 or bias.shape[1 + bias.ndim - rank] != m:
            return None
        return "Conv", bias.reshape(m).astype(np.float64)
    if p.op_type == "MatMul" and len(p.slots) == 2:
        x_shape = avals[p.slots[0][1]].shape
        if w.ndim != 2:
            return None
        n = int(w.shape[1])
        if len(x_shape) == 2:
            if bias.shape not in ((n,), (1, n)):
                return None
            return "Gemm", bias.reshape(n).astype(np.float64)
        # a rank > 2 activation: onnxsim leaves it, TPU-MLIR's Top canonicalizer MatMulWithBias (Canonicalize/
        # MatMul.cpp: weight right operand, no batch, the Add's weight has N elements) merges it under the Add's name
        if len(x_shape) > 2 and bias.size == n and all(d == 1 for d in bias.shape[:-1]) and bias.shape[-1:] == (n,):
            return "Gemm", bias.reshape(n).astype(np.float64), "Add"
    return None


# --- fixed-batch models run sample by sample -------------------------------------------------------------------

#: ONNX op types that are sample-local on tensors leading with the batch (each output row depends only on the same
#: input row): run on the stacked batch as they are.  Every other op of a per-sample graph runs per chunk.
_SAMPLE_LOCAL = {"Conv", "Relu", "PRelu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu",
                 "Selu", "Softplus", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf", "Gelu", "Mish", "Sign",
                 "Floor", "Ceil", "Round", "Cast", "Identity", "Add", "Sub", "Mul", "Div", "Max", "Min", "Pow",
                 "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN",
                 "InstanceNormalization", "Flatten", "Softmax", "LogSoftmax", "Concat", "Gemm", "MatMul", "ReduceMean",
                 registry.CHAIN}


_CHAIN_NOT_LOCAL = {"Softmax", "LogSoftmax", "Concat", "Flatten", "ReduceMean", "Gemm", "MatMul"}


def _stacked(n: int, shape) -> tuple[int, ...]:
    """Shape of ``n`` deployment-batch results stacked along axis 0 (a scalar per sample stacks to ``(n,)``)."""
    shape = tuple(shape)
    return (n * shape[0],) + shape[1:] if shape else (n,)


def _sample_local(op: Op, g: Graph, param_shapes) -> bool:
    """Whether ``op`` of the deployment graph ``g`` gives, on ``n`` deployment batches stacked along axis 0, the
    ``n`` results stacked: every tensor it reads and writes leads with the batch, it mixes nothing along axis 0,
    and its weights / constants broadcast per sample (decided from static shapes and attributes)."""
    B = g.batch
    shapes = [g.tensor_shape(t) for t in op.inputs] + list(op.out_shapes)
    if not op.inputs or any(not s or s[0] != B for s in shapes) or op.onnx_type not in _SAMPLE_LOCAL:
        return False
    if op.onnx_type == registry.CHAIN:  # fused nodes: elementwise steps, Conv, BatchNormalization
        return all(t in _SAMPLE_LOCAL and t not in _CHAIN_NOT_LOCAL for t, _a, _x in op.attr("chain"))
    rank = len(op.out_shapes[0])
    t = op.onnx_type
    if t == "Concat" and (op.weights or op.consts):  # a constant input has the deployment batch: no stacking
        return False
    if t in ("Softmax", "LogSoftmax", "Concat"):
        return int(op.attr("axis", 1 if t == "Concat" else -1)) % rank != 0
    if t == "Flatten":
        return int(op.attr("axis", 1)) % len(shapes[0]) != 0
    if t == "ReduceMean":
        return op.type == "AvgPool"
    if t == "Gemm":
        return not op.attr("transA", 0) and len(shapes[0]) == 2
    if t == "MatMul":
        return len(op.inputs) == 1 and all(len(param_shapes[k]) <= 2 for _r, k in op.weights) and \
            all(np.ndim(v) <= 2 for _r, v in op.consts)
    if t in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"):  # broadcast operands: none may span samples
        others = [tuple(param_shapes[k]) for _r, k in op.weights] + [np.shape(v) for _r, v in op.consts]
        return all(len(s) < rank or s[0] == 1 for s in others)
    return True


def per_sample_graph(g0: Graph, batch: int, batch_inputs, param_shapes, path: str = "") -> Graph:
    """The deployment graph ``g0`` run on ``batch = n * g0.batch`` samples, ``n`` deployment batches stacked along
    axis 0 in every tensor (shape :func:`_stacked`).  Ops that are not :func:`_sample_local` get the attribute
    ``per_sample = (n, input shapes, output shapes at deployment)``: their float implementation
    (:func:`qsens.onnx.convert.run_op_roles`) runs once per deployment batch (``lax.map``), as TPU-MLIR runs a
    fixed-batch model."""
    B = g0.batch
    if batch % B:
        raise ModelError(f"'{path}' has a fixed batch of {B} that cannot be rebound; it runs in batches of {B}, "
                         f"and {batch} is not a multiple")
    if not all(batch_inputs):
        raise ModelError(f"'{path}' has a fixed batch and inputs of shapes {list(g0.input_shapes)} that do not all "
                         f"lead with it; it cannot run at batch {batch}")
    n = batch // B
    ops = []
    for op in g0.ops:
        attrs = op.attrs
        if op.type != "Input" and not _sample_local(op, g0, param_shapes):
            ps = (n, tuple(g0.tensor_shape(t) for t in op.inputs), tuple(op.out_shapes))
            attrs = freeze_attrs({**dict(op.attrs), "per_sample": ps})
        ops.append(dataclasses.replace(op, attrs=attrs, out_shapes=tuple(_stacked(n, s) for s in op.out_shapes)))
    return dataclasses.replace(g0, ops=tuple(ops), input_shapes=tuple(_stacked(n, s) for s in g0.input_shapes),
                               batch=batch, per_sample=n)
