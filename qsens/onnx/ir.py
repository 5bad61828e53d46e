"""The canonical graph: TPU-MLIR's Top dialect, as immutable Python data.

A :class:`Graph` is what every other part of qsens works on (quantization, calibration, search).
It is produced from an ONNX model by :func:`qsens.onnx.canonical.canonicalize` and is *static*: attributes,
shapes and constant inputs are Python values decided from the model (never from sample data).
Weights are referenced by key into ``params`` (a flat ``dict[str, jax.Array]`` of float32 arrays), so
changing weights never changes the graph.

Conventions (the contract shared by ``qsens.quant``, ``qsens.calib`` and ``qsens.search``):

* ``Graph.ops`` is the canonical op list in ONNX node order, the ``Input`` ops first (one per graph
  input).  Every table, threshold array, mask and log uses this order.
* Every op has one or more output *tensors*; ``op.outputs[0] == op.name``.  Calibration tables are keyed by
  tensor name.  ``Graph.tensors`` lists all op output tensors in op order (= calibration-table order).
* ``op.inputs`` are activation tensor names (outputs of earlier ops).  Weights are in ``op.weights``
  (role -> params key), e.g. Conv has roles ``"filter"`` (O, I/group, kh, kw) and optionally ``"bias"`` (O,).
* ``op.type`` is the Top op type without the ``top.`` prefix (``Input, Conv, Add, AvgPool, MaxPool, MatMul,
  Reshape, Permute, Softmax, PRelu, Relu, Scale, Concat, ...``).
* ``op.attrs`` is a hashable, sorted tuple of ``(key, value)`` pairs; read it with ``op.attr(key, default)``.
  Conv: ``kernel_shape (kh, kw)``, ``strides (sh, sw)``, ``pads (top, left, bottom, right)``,
  ``dilations (dh, dw)``, ``group``; every op that can carry a fused activation: ``do_relu`` (bool) and
  ``relu_limit`` (float, -1.0 = unbounded; 6.0 for ReLU6 / Clip(0, 6)).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np


def freeze_attrs(attrs: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Attributes as a sorted tuple of pairs with lists turned into tuples (hashable, static)."""

    def frz(v):
        if isinstance(v, list | tuple):
            return tuple(frz(x) for x in v)
        return v

    return tuple(sorted((k, frz(v)) for k, v in attrs.items()))


def value_fingerprint(v: Any) -> Any:
    """A hashable, exact stand-in for an attribute or constant value in a cache key: arrays by dtype, shape and a
    digest of every byte (``repr`` would elide a big one), lists and tuples element by element, other values as
    they are (an unhashable one makes the key unhashable)."""
    if isinstance(v, np.ndarray | np.generic):
        a = np.asarray(v)
        return ("nd", a.dtype.str, a.shape, hashlib.sha1(a.tobytes()).hexdigest())
    if isinstance(v, tuple | list):
        return tuple(value_fingerprint(x) for x in v)
    return v


@dataclasses.dataclass(frozen=True)
class Op:
    """One canonical (Top-dialect) op."""

    name: str  # canonical op name = name of its first output tensor
    type: str  # Top op type, e.g. "Conv"
    inputs: tuple[str, ...]  # activation tensors consumed (canonical tensor names)
    outputs: tuple[str, ...]  # tensors produced; outputs[0] == name
    weights: tuple[tuple[str, str], ...] = ()  # (role, params key)
    attrs: tuple[tuple[str, Any], ...] = ()
    out_shapes: tuple[tuple[int, ...], ...] = ()  # at the deployment batch
    out_dtypes: tuple[str, ...] = ()  # numpy dtype names
    onnx_nodes: tuple[str, ...] = ()  # ONNX node names merged into this op
    onnx_type: str = ""  # ONNX op type of the main node
    consts: tuple[tuple[str, Any], ...] = ()  # static non-weight inputs (numpy arrays), by role
    # ONNX positional inputs of the main node: ("act", i) -> inputs[i], ("weight", role), ("const", role),
    # ("none", "") for an omitted optional input.  Used to run the op's float implementation.
    slots: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def weight(self, role: str) -> str | None:
        for r, k in self.weights:
            if r == role:
                return k
        return None

    def const(self, role: str, default: Any = None) -> Any:
        for r, v in self.consts:
            if r == role:
                return v
        return default

    def relu_bound(self) -> float | None:
        """The finite upper bound of this op's output when it ends in a bounded ReLU (ReLU6 / Clip(0, x): a fused
        ``do_relu`` with ``relu_limit`` > 0, or a standalone ``Relu`` with one), else None."""
        lim = self.attr("relu_limit", -1.0)
        if lim is None or not float(lim) > 0 or not (self.type == "Relu" or bool(self.attr("do_relu"))):
            return None
        return float(lim)

    @property
    def weight_roles(self) -> dict[str, str]:
        return dict(self.weights)

    def __hash__(self) -> int:  # consts may hold numpy arrays
        return hash((self.name, self.type, self.inputs, self.outputs, self.weights, self.attrs))

    def __eq__(self, other) -> bool:
        return isinstance(other, Op) and hash(self) == hash(other) and self.name == other.name


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """A canonical graph at one batch size (the batch is the leading dim of every input)."""

    ops: tuple[Op, ...]
    inputs: tuple[str, ...]  # graph input names (= names of the Input ops)
    outputs: tuple[str, ...]  # canonical tensor names of the graph outputs, in ONNX graph order
    output_names: tuple[str, ...]  # the ONNX names of the graph outputs (keys of apply_fn's result)
    input_shapes: tuple[tuple[int, ...], ...]
    batch: int
    opset: int
    model_path: str = ""
    #: >0: a fixed-batch model at ``batch = per_sample * deployment batch`` that could not be rebound; every tensor
    #: holds ``per_sample`` deployment-batch results stacked along axis 0 and the ops that are not sample-local
    #: carry the ``per_sample`` attribute (``qsens.onnx.canonical.per_sample_graph``)
    per_sample: int = 0

    # -- derived views -------------------------------------------------------------------------------
    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(op.name for op in self.ops)

    @property
    def tensors(self) -> tuple[str, ...]:
        """All op output tensors in canonical order (the calibration-table order)."""
        return tuple(t for op in self.ops for t in op.outputs)

    def op(self, name: str) -> Op:
        return self._by_name[name]

    def producer(self, tensor: str) -> Op:
        return self._producer[tensor]

    def consumers(self, tensor: str) -> tuple[Op, ...]:
        return self._consumers.get(tensor, ())

    def index(self, name: str) -> int:
        return self._index[name]

    def tensor_shape(self, tensor: str) -> tuple[int, ...]:
        op = self._producer[tensor]
        return op.out_shapes[op.outputs.index(tensor)]

    @property
    def last_use(self) -> dict[str, int]:
        """tensor -> index of the last op that reads it (graph outputs: len(ops))."""
        return self._last_use

    def __post_init__(self):
        by_name = {op.name: op for op in self.ops}
        producer = {t: op for op in self.ops for t in op.outputs}
        index = {op.name: i for i, op in enumerate(self.ops)}
        consumers: dict[str, list[Op]] = {}
        last_use: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            for t in op.inputs:
                consumers.setdefault(t, []).append(op)
                last_use[t] = i
        for t in self.outputs:
            last_use[t] = len(self.ops)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_producer", producer)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_consumers", {k: tuple(v) for k, v in consumers.items()})
        object.__setattr__(self, "_last_use", last_use)


# Ops that keep every tensor's leading (batch) dim yet mix samples when their axis is 0.
_AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "CumSum", "LpNormalization"}


def batch_separable(g_full: Graph, g_chunk: Graph) -> bool:
    """Whether running ``g_chunk`` on slices of the batch gives ``g_full``'s result: both graphs have the same ops,
    every tensor of both leads with its graph's batch and has the same other dims in both (so no op reshapes,
    reduces, concatenates or transposes across samples) and no shape-preserving op normalizes over axis 0.
    Decided from static shapes and attributes only."""
    if len(g_full.ops) != len(g_chunk.ops) or g_full.batch == g_chunk.batch or g_full.per_sample or g_chunk.per_sample:
        return False
    for a, b in zip(g_full.ops, g_chunk.ops):
        if a.name != b.name or a.type != b.type or a.outputs != b.outputs:
            return False
        if a.onnx_type in _AXIS_OPS or a.type in _AXIS_OPS:
            rank = len(g_full.tensor_shape(a.inputs[0])) if a.inputs else 1
            ax = a.attr("axis", -1 if a.onnx_type in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization") else 0)
            if ax is None or int(ax) % max(rank, 1) == 0:
                return False
        for t in a.inputs + a.outputs:
            s, c = g_full.tensor_shape(t), g_chunk.tensor_shape(t)
            if not s or not c or s[0] != g_full.batch or c[0] != g_chunk.batch or s[1:] != c[1:]:
                return False
    return True
