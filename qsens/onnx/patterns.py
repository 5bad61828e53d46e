"""TPU-MLIR's activation patterns and constant-operand op types, applied to the raw node list of
:mod:`qsens.onnx.canonical` (TPU-MLIR 1.23; the rules are recorded in docs/bm1684.md, "Canonical forms").

1. ``onnx_opt`` (``python/transform/OnnxOpt.py``: ``TorchHardSigmoidPattern``, ``TorchHardSwishPattern``,
   ``TorchHardSwishPattern2``), which model_transform runs on the simplified ONNX model before converting it:

   * ``Add(x, 3) -> Clip(0, 6) -> Div(6)``            -> ``HardSigmoid`` (alpha 1/6, beta 0.5)
   * ``HardSigmoid(x; alpha=float32(1/6), beta=0.5) -> Mul(x, .)`` -> ``HardSwish``
   * ``Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(6)`` -> ``HardSwish``

   The matcher walks the node list in order (Constant nodes skipped) and needs the pattern's nodes
   *consecutive*; constants must equal 3 / 0 / 6 exactly with shape ``()`` or ``(1,)``; Add and Mul operands
   may come in either order.  The fused node takes the last node's output and is named
   ``<output>_<new type>``.
2. The ONNX converter (``OnnxConverter.py``): ``Sub(x, c)`` -> ``AddConst(-c)``, ``Sub(c, x)`` ->
   ``SubConst(c, is_reverse)``, ``Div(x, c)`` -> ``MulConst(1/c)`` (a float64 reciprocal of the float32
   constant), where ``c`` is a *scalar* weight (one element, or all elements equal); ``Resize`` -> ``Interp``;
   ``ConvTranspose`` -> ``Deconv``.
3. Top canonicalizers: ``Add`` / ``Mul`` with a scalar weight -> ``AddConst`` / ``MulConst``, with a per-channel
   weight -> ``Scale`` (``AddToScale``, ``MulToScale``; a BatchNormalization not folded into a Conv is a Scale too);
   ``Mul(x, Sigmoid(x))`` -> ``SiLU`` (named after the Mul); ``Interp`` in nearest mode with integer scales
   -> ``Upsample``.

A fused pattern keeps computing exactly what its ONNX nodes compute, node by node (the internal op
``qsens.Chain``): the float model is unchanged by the fusion, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .ir import freeze_attrs
from .registry import CHAIN

HSIG_ALPHA = float(np.float32(1.0 / 6.0))  # 0.1666666716337204, the only alpha TorchHardSwishPattern accepts


def slot_value(slot, params) -> np.ndarray | None:
    kind, ref = slot
    if kind == "weight":
        return np.asarray(params[ref])
    if kind == "const":
        return np.asarray(ref)
    return None


def scalar_of(slot, params) -> float | None:
    """BaseConverter.isScalar: a weight with one element or with all elements equal -> its value."""
    v = slot_value(slot, params)
    if v is None or not np.issubdtype(v.dtype, np.floating) or v.size == 0:
        return None
    flat = v.reshape(-1)
    if v.size == 1 or bool(np.all(flat == flat[0])):
        return float(flat[0])
    return None


def _equals(slot, params, value: float) -> bool:
    """OnnxOpt's ``tensor_value`` check: shape () or (1,) and exactly ``value``."""
    v = slot_value(slot, params)
    if v is None:
        return False
    v = v.reshape(1) if v.shape == () else v
    return v.shape == (1,) and float(v[0]) == value


def _clip_bounds_equal(r, params, lo: float, hi: float) -> bool:
    if len(r.slots) >= 3:
        return _equals(r.slots[1], params, lo) and _equals(r.slots[2], params, hi)
    a = r.attrs  # opset < 11: min/max attributes
    return a.get("min") == lo and a.get("max") == hi


def _act(slot) -> str | None:
    return slot[1] if slot[0] == "act" else None


def _other(r, t: str):
    """For a two-input Add/Mul with one input ``t``: the other slot (either order), else None."""
    if len(r.slots) != 2:
        return None
    if _act(r.slots[0]) == t:
        return r.slots[1]
    if _act(r.slots[1]) == t:
        return r.slots[0]
    return None


class _Chain:
    """Builds the ``qsens.Chain`` step list of a fused pattern (x = the pattern's input)."""

    def __init__(self, x: str):
        self.x = x
        self.slots: list = [("act", x)]
        self.steps: list = []
        self.ref: dict[str, str] = {x: "x"}

    def add(self, r) -> None:
        if r.op_type == CHAIN:  # inline a fused node's steps
            base = len(self.steps)
            cmap = {}
            for k, sl in enumerate(r.slots[1:]):
                cmap[f"c{k}"] = f"c{len(self.slots) - 1}"
                self.slots.append(sl)
            xin = self.ref[r.slots[0][1]]
            for t, a, args in r.attrs["chain"]:
                new = tuple(xin if x == "x" else cmap[x] if x.startswith("c") else f"s{base + int(x[1:])}" if x else ""
                            for x in args)
                self.steps.append((t, a, new))
            self._relu(r)
            self.ref[r.outputs[0]] = f"s{len(self.steps) - 1}"
            return
        args = []
        for s in r.slots:
            if s[0] == "act":
                args.append(self.ref[s[1]])
            elif s[0] == "none":
                args.append("")
            else:
                args.append(f"c{len(self.slots) - 1}")
                self.slots.append(s)
        attrs = freeze_attrs({k: v for k, v in r.attrs.items() if not isinstance(v, np.ndarray)})
        self.steps.append((r.op_type, attrs, tuple(args)))
        self._relu(r)
        self.ref[r.outputs[0]] = f"s{len(self.steps) - 1}"

    def _relu(self, r) -> None:
        """A ReLU fused into a member node (``extra['relu']``) becomes a step (plain ReLU only: merges that would
        carry a ReLU6 are not made, see :func:`merge_top`)."""
        if r.extra.get("relu"):
            self.steps.append(("Relu", (), (f"s{len(self.steps) - 1}",)))

    def into(self, r, top_type: str, name_type: str) -> None:
        """Make raw ``r`` (the last member, keeping its output) the fused node."""
        r.op_type = CHAIN
        r.attrs = {"chain": tuple(self.steps)}
        r.slots = self.slots
        r.extra = {"top_type": top_type, "name_type": name_type}


def fuse_onnx_opt_patterns(kept: list, params: dict, sole_user: Callable[[str, Any], bool]) -> list:
    """Step 1 of the module docstring on ``kept`` (raw nodes in ONNX order); returns the new list."""
    out: list = []
    i = 0
    while i < len(kept):
        m = _match_at(kept, i, params, sole_user)
        if m is None:
            out.append(kept[i])
            i += 1
            continue
        kind, n, x = m
        nodes = kept[i : i + n]
        ch = _Chain(x)
        for r in nodes:
            ch.add(r)
        last = nodes[-1]
        ch.into(last, kind, kind)
        last.nodes = [nm for r in nodes for nm in r.nodes]
        if kind == "HardSigmoid":
            last.extra["top_attrs"] = {"alpha": 1.0 / 6.0, "beta": 0.5}
        out.append(last)
        i += n
    return out


def _match_at(kept, i, params, sole_user):
    """(kind, node count, input tensor) of a pattern starting at ``kept[i]``, else None."""
    r0 = kept[i]

    def nxt(k, op_type):
        return kept[i + k] if i + k < len(kept) and kept[i + k].op_type == op_type else None

    if r0.op_type == "HardSigmoid" and len(r0.slots) == 1 and r0.slots[0][0] == "act":
        if r0.attrs.get("alpha") == HSIG_ALPHA and r0.attrs.get("beta") == 0.5:
            x = r0.slots[0][1]
            mul = nxt(1, "Mul")
            if mul is not None and sole_user(r0.outputs[0], mul):
                o = _other(mul, r0.outputs[0])
                if o is not None and o == ("act", x):
                    return "HardSwish", 2, x
        return None
    if r0.op_type != "Add":
        return None
    x = None
    for a, b in ((0, 1), (1, 0)):
        if len(r0.slots) == 2 and r0.slots[a][0] == "act" and _equals(r0.slots[b], params, 3.0):
            x = r0.slots[a][1]
            break
    clip = nxt(1, "Clip")
    if x is None or clip is None or _act(clip.slots[0]) != r0.outputs[0] or not _clip_bounds_equal(clip, params, 0.0, 6.0):
        return None
    if not sole_user(r0.outputs[0], clip):
        return None
    div = nxt(2, "Div")
    if div is not None and _act(div.slots[0]) == clip.outputs[0] and _equals(div.slots[1], params, 6.0):
        return ("HardSigmoid", 3, x) if sole_user(clip.outputs[0], div) else None
    mul, div = nxt(2, "Mul"), nxt(3, "Div")
    if mul is None or div is None or _other(mul, clip.outputs[0]) != ("act", x) or not sole_user(clip.outputs[0], mul):
        return None
    if _act(div.slots[0]) == mul.outputs[0] and _equals(div.slots[1], params, 6.0) and sole_user(mul.outputs[0], div):
        return "HardSwish", 4, x
    return None


def fuse_silu(kept: list, producer: dict, sole_user: Callable[[str, Any], bool]) -> list:
    """``Mul(x, Sigmoid(x))`` (either order, the Sigmoid used only by the Mul) -> SiLU named after the Mul."""
    dead = set()
    for r in kept:
        if r.op_type != "Mul" or len(r.slots) != 2 or any(s[0] != "act" for s in r.slots):
            continue
        for a, b in ((0, 1), (1, 0)):
            s = producer.get(r.slots[b][1])
            if (s is None or s.op_type != "Sigmoid" or id(s) in dead or s.slots[0] != ("act", r.slots[a][1])
                    or not sole_user(s.outputs[0], r) or s.attrs.get("scale", 1) != 1 or s.attrs.get("bias", 0) != 0):
                continue
            x = r.slots[a][1]
            ch = _Chain(x)
            ch.add(s)
            ch.add(r)
            ch.into(r, "SiLU", "Mul")
            r.nodes = s.nodes + r.nodes
            dead.add(id(s))
            break
    return [r for r in kept if id(r) not in dead]


def _per_channel(slot, params, act_shape) -> np.ndarray | None:
    """AddToScale / MulToScale's operand test: a float weight with one value per channel of a (N, C, ...)
    activation (shape (C, 1, ...) or (1, C, 1, ...) once aligned to the activation's rank) -> its values (C,)."""
    v = slot_value(slot, params) if slot[0] == "weight" else None
    if v is None or not np.issubdtype(v.dtype, np.floating) or len(act_shape) < 2 or v.ndim > len(act_shape):
        return None
    c = act_shape[1]
    aligned = (1,) * (len(act_shape) - v.ndim) + tuple(v.shape)
    if v.size != c or aligned != (1, c) + (1,) * (len(act_shape) - 2):
        return None
    return v.reshape(c).astype(np.float32)


def _as_scale(r, params, scale: np.ndarray, bias: np.ndarray) -> None:
    """Top type Scale with its INT8 per-channel ``q_scale`` / ``q_bias`` (the node still runs as it is in float)."""
    ks, kb = f"{r.outputs[0]}@q_scale", f"{r.outputs[0]}@q_bias"
    params[ks], params[kb] = scale.astype(np.float32), bias.astype(np.float32)
    r.extra.update(top_type="Scale", extra_weights=[("q_scale", ks), ("q_bias", kb)])


def assign_top_types(kept: list, params: dict, avals: dict) -> None:
    """Steps 2-3 of the module docstring that change only the Top type (and its attributes) of one node."""
    for r in kept:
        t = r.op_type
        if t == "BatchNormalization" and r.slots[0][0] == "act" and all(s[0] in ("weight", "const") for s in r.slots[1:5]):
            # a BN not folded into a Conv is a Scale (BatchNormToScale): a = gamma/sqrt(var+eps), b = beta - mean*a
            g, b, mu, var = (np.asarray(slot_value(s, params), np.float64) for s in r.slots[1:5])
            a = g / np.sqrt(var + float(r.attrs.get("epsilon", 1e-5)))
            _as_scale(r, params, a, b - mu * a)
            continue
        if t in ("Add", "Sub", "Mul", "Div") and len(r.slots) == 2:
            kinds = [s[0] for s in r.slots]
            if kinds.count("act") != 1:
                continue
            a = kinds.index("act")
            c = scalar_of(r.slots[1 - a], params)
            shape_in = tuple(avals[r.slots[a][1]].shape)
            shape_out = tuple(r.avals[0].shape)
            if shape_in != shape_out:  # the constant broadcasts the activation up: not a Const op
                continue
            if c is None:
                pc = _per_channel(r.slots[1 - a], params, shape_in) if t in ("Add", "Mul") else None
                if pc is not None and t == "Add":
                    _as_scale(r, params, np.ones_like(pc), pc)
                elif pc is not None and len(shape_in) == 4:  # MulToScale: 4-D only
                    _as_scale(r, params, pc, np.zeros_like(pc))
                elif t in ("Add", "Mul") and r.slots[1 - a][0] == "weight":
                    # any other weight: BM1684 Add/Mul quantize it per tensor (max|w|, uint8 if no value < 0): its
                    # signedness is a static fact of the model
                    w = slot_value(r.slots[1 - a], params)
                    r.extra["top_attrs"] = {"weight_signed": bool(np.min(w) < 0)}
                continue
            if t == "Add":
                r.extra.update(top_type="AddConst", top_attrs={"const_val": c})
            elif t == "Mul":
                r.extra.update(top_type="MulConst", top_attrs={"const_val": c})
            elif t == "Sub":
                if a == 0:
                    r.extra.update(top_type="AddConst", top_attrs={"const_val": -c})
                else:
                    r.extra.update(top_type="SubConst", top_attrs={"const_val": c, "is_reverse": True})
            elif t == "Div" and a == 0 and c != 0.0:
                r.extra.update(top_type="MulConst", top_attrs={"const_val": 1.0 / c})
            elif t == "Div":
                r.extra.update(top_type="Reciprocal", top_attrs={"const_val": c})
        elif t in ("Resize", "Upsample"):
            x = avals.get(r.slots[0][1]) if r.slots and r.slots[0][0] == "act" else None
            if x is None or len(x.shape) != 4:
                continue
            (h, w), (oh, ow) = x.shape[2:], r.avals[0].shape[2:]
            mode = r.attrs.get("mode", "nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode == "nearest" and oh % h == 0 and ow % w == 0 and r.avals[0].shape[:2] == x.shape[:2]:
                r.extra.update(top_type="Upsample", top_attrs={"scale_h": oh // h, "scale_w": ow // w})
            else:
                coord = r.attrs.get("coordinate_transformation_mode", "half_pixel")
                coord = coord.decode() if isinstance(coord, bytes) else coord
                r.extra.update(top_type="Interp", top_attrs={"mode": mode, "coord_mode": coord,
                                                             "scale_h": oh / h, "scale_w": ow / w})
        elif t == "ConvTranspose":
            r.extra["top_type"] = "Deconv"


def _q(r, params, role: str):
    """An INT8 parameter of raw ``r``: its ``q_<role>`` extra weight, else None."""
    for k, key in r.extra.get("extra_weights", ()):
        if k == f"q_{role}":
            return np.asarray(params[key], np.float32)
    return None


def _set_q(r, params, **vals) -> None:
    ew = []
    for role, v in vals.items():
        if v is None:
            continue
        key = f"{r.outputs[0]}@q_{role}"
        params[key] = np.asarray(v, np.float32)
        ew.append((f"q_{role}", key))
    r.extra["extra_weights"] = ew


def merge_top(kept: list, params: dict, producer: dict, sole_user: Callable[[str, Any], bool]) -> list:
    """TPU-MLIR 1.23's Top canonicalizers that merge a node into its single consumer or producer, on nodes already
    typed by :func:`assign_top_types` (the fused node computes its ONNX nodes unchanged; its INT8 parameters are
    the merged float32 weights, computed as the C++ does):

    * ``MergeMulConst`` (MulConst.cpp): ``Conv`` (2-D) or ``MatMul`` (weight right operand) -> ``MulConst(c)``:
      filter and bias multiplied by ``c`` (float32 * double -> float32); the Conv takes the MulConst's name
      (checked: gen_const's ``mul47_Mul``).  Not when the Conv has a ReLU and ``c < 0``; qsens also leaves a
      Conv with a ReLU6 (``relu_limit``) unmerged.
    * ``ConstbinaryMergeToTopScale`` (Scale.cpp): ``MulConst(c)`` -> Scale: ``scale *= float(c)``;
      ``AddConst(c)`` -> Scale: ``bias = scale * float(c)`` (the C++ starts the new bias from zeros: the Scale's own
      bias is dropped, reproduced as it is).
    * ``TopMultiScaleMergeToOne`` (and ``TopScaleMergeToBatchNorm``, the same result once the BatchNorm is a Scale):
      Scale (no ReLU) -> Scale: ``scale = s1*s2``, ``bias = b1*s2 + b2`` (float32), named after the second.
    """
    dead: set[int] = set()
    for r in kept:
        if id(r) in dead or not r.slots or r.slots[0][0] != "act":
            continue
        tt = r.extra.get("top_type")
        p = producer.get(r.slots[0][1])
        if p is None or id(p) in dead or not sole_user(r.slots[0][1], r):
            continue
        pt = p.extra.get("top_type") or {"Conv": "Conv", "Gemm": "MatMul", "MatMul": "MatMul"}.get(p.op_type)
        if tt == "MulConst" and pt in ("Conv", "MatMul") and p.op_type != CHAIN:
            c = float(r.extra["top_attrs"]["const_val"])
            w_slot = p.slots[1] if len(p.slots) > 1 else None
            if w_slot is None or w_slot[0] != "weight" or (p.extra.get("relu") and c < 0):
                continue
            if p.extra.get("relu") and p.extra.get("relu_limit", -1.0) >= 0:
                continue
            if pt == "Conv" and np.asarray(params[w_slot[1]]).ndim != 4:
                continue
            w = np.asarray(params[w_slot[1]], np.float32)
            b = slot_value(p.slots[2], params) if len(p.slots) > 2 and p.slots[2][0] == "weight" else None
            if b is not None and w.size == b.size and bool(np.all(w.reshape(-1) + b.reshape(-1) == 0)):
                continue  # the C++ guard (a bert bf16 fix)
            relu = p.extra.get("relu") or r.extra.get("relu")
            ch = _Chain(p.slots[0][1])
            ch.add(p)
            ch.add(r)
            nodes = p.nodes + r.nodes
            ch.into(r, pt, r.name_node.op_type)
            r.extra["top_attrs"] = {k: v for k, v in p.attrs.items() if not isinstance(v, np.ndarray)}
            if pt == "Conv":
                r.extra["conv_attrs"] = dict(p.attrs)
            _set_q(r, params, filter=(w.astype(np.float64) * c).astype(np.float32),
                   bias=None if b is None else (np.asarray(b, np.float64) * c).astype(np.float32))
            if relu:
                r.extra.update(relu=True, relu_limit=-1.0)
            r.nodes = nodes
            dead.add(id(p))
        elif tt == "Scale" and pt in ("MulConst", "AddConst") and not p.extra.get("relu"):
            scale, bias = _q(r, params, "scale"), _q(r, params, "bias")
            c = np.float32(p.extra["top_attrs"]["const_val"])
            if pt == "MulConst":
                scale = scale * c
            else:
                bias = scale * c
            _absorb(p, r, params, scale, bias)
            dead.add(id(p))
        elif tt == "Scale" and pt == "Scale" and not p.extra.get("relu"):
            s1, b1 = _q(p, params, "scale"), _q(p, params, "bias")
            s2, b2 = _q(r, params, "scale"), _q(r, params, "bias")
            _absorb(p, r, params, s1 * s2, b1 * s2 + b2)
            dead.add(id(p))
    return [r for r in kept if id(r) not in dead]


def _absorb(p, r, params, scale, bias) -> None:
    """Raw ``r`` (a Scale) becomes the fused node of ``p`` then ``r``, with INT8 parameters ``scale``/``bias``."""
    relu = r.extra.get("relu")
    limit = r.extra.get("relu_limit")
    ch = _Chain(p.slots[0][1])
    ch.add(p)
    r.extra.pop("relu", None)  # r's own ReLU stays the op's (applied after the chain)
    ch.add(r)
    name_type = r.extra.get("name_type") or r.name_node.op_type
    ch.into(r, "Scale", name_type)
    r.nodes = p.nodes + r.nodes
    _set_q(r, params, scale=scale, bias=bias)
    if relu:
        r.extra.update(relu=True, relu_limit=limit)
