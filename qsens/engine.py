"""Op-by-op execution with one compiled executable per op *signature*.

The searches run the same graph many times from different start points (a float prefix advanced op by op,
float suffixes behind each candidate).  Compiling one whole-graph function per start point would cost one
XLA compile per op.  The :class:`Engine` instead jits each canonical op on its own, keyed by its
*signature* (Top type, attributes, constant inputs, weight shapes, layouts): the 61 ops of
EfficientNet-Lite0 share 40 executables, and JAX's compilation cache (persistent on disk, see
:func:`enable_compilation_cache`) makes a second run compile nothing.  Activations stay in the static
layout plan of :func:`qsens.onnx.convert.layout_plan` (NHWC between channel-last float ops) from one
executable to the next.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .exe_cache import PersistentJit
from .onnx.convert import (
    FLOAT_TYPE_FOLLOWS_INPUT,
    Model,
    f32_tensor,
    layout_plan,
    op_float_type,
    op_runs_nhwc,
    run_op_planned,
)
from .onnx.ir import Graph, Op, value_fingerprint
from .onnx.layout import TO_NCHW, TO_NHWC, per_op_executable, traced_alone_differs
from .onnx.registry import CHAIN

#: Float ops a multi-op block may hold (:meth:`Engine.block_plan`): types whose float32 arithmetic ends in no
#: multiply that a consumer in the same executable could contract into a fused multiply-add (so one executable over
#: several of them computes the bits their own executables compute; tested on the zoo's models).  Elementwise
#: chains, Mul, Scale, Sigmoid, PRelu, ... stay op by op, and so does AvgPool (a global mean's division by a
#: constant may become a multiply by its reciprocal).
BLOCK_TYPES = frozenset({"Conv", "Add", "MaxPool", "Reshape", "MatMul", "Concat"})
#: Most ops in one block (0 or 1: no blocks).  A suffix that starts inside a block runs op by op up to the next
#: block, so smaller blocks waste less; measured on Lite0's 58 float suffixes at 30 images (2-core CPU): op by op
#: 10.0 s, blocks of <= 3 / 6 / unbounded ops 9.2 / 8.8 / 9.2 s.
BLOCK_OPS = 6

#: Images per compiled batch for calibration and search: bounds memory (activations of one chunk) and lets
#: calibration, tuner, search prefix, suffixes and mixed runs share one set of executables.
DEFAULT_CHUNK = 10


def pad_batch(inputs: Mapping[str, np.ndarray], batch: int) -> tuple[dict[str, np.ndarray], int]:
    """Pad a short batch to ``batch`` rows by repeating its last sample (as TPU-MLIR pads a short batch);
    returns the padded arrays and the real row count, so callers slice the padding off again."""
    n = next(iter(inputs.values())).shape[0]
    if n >= batch:
        return dict(inputs), n
    return {k: np.concatenate([v, np.repeat(v[-1:], batch - n, 0)]) for k, v in inputs.items()}, n


def to_device(x):
    """Host array -> device array without compiling anything (``jnp.asarray`` eagerly compiles a 'stage')."""
    if isinstance(x, jax.Array):
        return x
    return jax.device_put(np.asarray(x))


def enable_compilation_cache(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache in a user cache dir (``$QSENS_HOME/jax_cache``)."""
    from .paths import cache_dir

    path = path or os.environ.get("QSENS_JAX_CACHE") or str(cache_dir() / "jax_cache")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from . import exe_cache

    exe_cache.enable(path)  # and qsens's own: no tracing or lowering of known executables (qsens/exe_cache.py)
    return path


def op_signature(op: Op, params: Mapping[str, Any], in_nhwc: Sequence[bool], out_nhwc: bool) -> tuple:
    """Everything static that the compiled code of ``op`` depends on (input shapes are added by jit)."""
    attrs = tuple((k, v) for k, v in op.attrs if not k.startswith("_") or k == "_opset")
    return (
        op.type, op.onnx_type, attrs, op.slots, len(op.outputs),
        tuple((r, tuple(params[k].shape), str(params[k].dtype)) for r, k in op.weights),
        value_fingerprint(op.consts), tuple(in_nhwc), bool(out_nhwc),
    )


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_total = [0.0]
_listening = [False]


def _on_event(name: str, secs: float, **_kw) -> None:
    if name in _COMPILE_EVENTS:
        _compile_total[0] += secs


def compile_seconds() -> float:
    """Seconds JAX spent tracing, lowering and compiling (XLA) in this process since qsens started listening."""
    if not _listening[0]:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening[0] = True
    return _compile_total[0]


class CompileStats:
    """Executables created (first call per shape) and the compile time JAX reports (trace + lower + XLA)."""

    def __init__(self):
        self.traces = 0
        self.calls = 0  # executable calls through Engine.call (compiles included)
        self.first_call_s = 0.0
        self._c0 = compile_seconds()

    @property
    def compile_s(self) -> float:
        return compile_seconds() - self._c0

    def as_dict(self) -> dict:
        return {"executables": self.traces, "calls": self.calls, "compile_s": round(self.compile_s, 3),
                "first_call_s": round(self.first_call_s, 3)}


class ExecutableCache:
    """A bounded (LRU) map from a *complete* key to a jitted executable.

    The key must hold everything the executable's Python closure reads at trace time (op type, attributes,
    constants, weight shapes, layouts; for INT8 executables also signedness, F32 status and the static input
    shapes the quantization parameters use): two ops with equal keys share one executable and its compiled
    code, which is what makes per-op execution cheap (Lite0's 61 ops need 40).  The cache also remembers
    which input shapes each executable has already been called with, so first calls can be timed as
    compiles.  Calibration and search share one cache (:data:`DEFAULT_CACHE` unless a job passes its own).
    """

    def __init__(self, maxsize: int = 4096):
        self.maxsize = maxsize
        self._fns: OrderedDict[Hashable, Callable] = OrderedDict()
        self._seen: dict[int, set] = {}

    def __len__(self) -> int:
        return len(self._fns)

    def get(self, key: Hashable, make: Callable[[], Callable]) -> Callable:
        fn = self._fns.get(key)
        if fn is not None:
            self._fns.move_to_end(key)
            return fn
        fn = make()
        self._fns[key] = fn
        if len(self._fns) > self.maxsize:
            _, old = self._fns.popitem(last=False)
            self._seen.pop(id(old), None)
        return fn

    def first_call(self, fn: Callable, shape_key: Hashable) -> bool:
        """True once per (executable, call shapes): the call that compiles."""
        seen = self._seen.setdefault(id(fn), set())
        if shape_key in seen:
            return False
        seen.add(shape_key)
        return True

    def clear(self) -> None:
        self._fns.clear()
        self._seen.clear()


#: The process's default cache (bounded): calibration and search in one process share its executables.
DEFAULT_CACHE = ExecutableCache()


class Engine:
    """Runs ``model``'s canonical graph at one batch size, op by op, with shared per-signature executables."""

    def __init__(self, model: Model, batch: int, *, channels_last: bool = True, stats: CompileStats | None = None,
                 cache: ExecutableCache | None = None, placement=None, float_type: str = "F32"):
        from .devices import Placement

        self.model = model
        #: where activations live (:mod:`qsens.devices`): ``batch`` images split over its devices, or one device
        self.placement = placement if placement is not None else Placement()
        self.graph: Graph = model.graph_at(batch)
        self.batch = batch
        self.params = model.params
        self.plan = layout_plan(self.graph, self.params, channels_last)
        self.stats = stats or CompileStats()
        self.cache = cache if cache is not None else DEFAULT_CACHE
        #: what float ops run in: F32, or F16 / BF16 as a mixed model's float layers (``--fp_type``)
        self.float_type = float_type
        self._blocks: dict[int, int] | None = None
        self._block_exes: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------------------------------ layout
    def to_plan(self, tensor: str, x_nchw):
        return jnp.transpose(x_nchw, TO_NHWC) if self.plan.get(tensor) else x_nchw

    def to_nchw(self, tensor: str, x):
        return jnp.transpose(x, TO_NCHW) if self.plan.get(tensor) else x

    # ------------------------------------------------------------------------------------------ executables
    def float_exe(self, i: int, int8_inputs: frozenset = frozenset()):
        """Op ``i``'s float executable; ``int8_inputs``: its input tensors a dequantized INT8 producer wrote (an F16 op
        does not round those: :func:`qsens.onnx.convert.float_type_op`)."""
        op = self.graph.ops[i]
        in_nhwc = tuple(bool(self.plan.get(t)) for t in op.inputs)
        out_nhwc = op_runs_nhwc(op, self.plan)
        ft = op_float_type(op, self.float_type)
        rin = tuple(f32_tensor(self.graph, t, ft) and t not in int8_inputs for t in op.inputs) if ft != "F32" else None
        key = ("float",) + op_signature(op, self.params, in_nhwc, out_nhwc) + ((ft, rin) if ft != "F32" else ())

        def make():
            def f(weights, acts, _op=op, _in=in_nhwc, _out=out_nhwc):
                with per_op_executable():
                    return run_op_planned(_op, weights, acts, _in, _out, ft, rin)

            return PersistentJit(key, f)

        return self.cache.get(key, make)

    def block_plan(self) -> dict[int, int]:
        """``{first op: stop}`` of the multi-op float blocks (static, from the graph): runs of consecutive
        :data:`BLOCK_TYPES` ops, at most :data:`BLOCK_OPS` each, leaving out every op that
        :func:`~qsens.onnx.layout.traced_alone_differs` (Lite0's strided depthwise layers on the CPU).  None for an
        F16 / BF16 engine (its float ops round what INT8 producers wrote differently, :meth:`float_exe`).

        One executable per block instead of one per op lets XLA fuse across the ops (an op's bias and clip with the
        next op's padding, no per-op dispatch and sync); the float bits are those of the op-by-op run (tested)."""
        if self._blocks is not None:
            return self._blocks
        ops = self.graph.ops if self.float_type == "F32" else ()
        ok = [op.type in BLOCK_TYPES and op.onnx_type != CHAIN
              and not traced_alone_differs(op, {r: self.params[k] for r, k in op.weights}) for op in ops]
        blocks: dict[int, int] = {}
        i = 0
        while i < len(ops):
            if not ok[i]:
                i += 1
                continue
            j = i
            while j < len(ops) and ok[j] and j - i < BLOCK_OPS:
                j += 1
            if j - i >= 2:
                blocks[i] = j
            i = j
        self._blocks = blocks
        return blocks

    def block_exe(self, a: int, b: int, outs: tuple[str, ...]):
        """``(executable, input tensors)`` of float ops ``[a, b)`` as one executable returning ``outs``:
        ``f(weights (one dict per op), acts (the input tensors' values)) -> [values of outs]``."""
        memo = (a, b, outs)
        hit = self._block_exes.get(memo)
        if hit is not None:
            return hit
        ops = self.graph.ops[a:b]
        local: dict[str, tuple[int, int]] = {}
        ins: list[str] = []
        wiring, sigs, layouts = [], [], []
        for j, op in enumerate(ops):
            refs = []
            for t in op.inputs:
                if t in local:
                    refs.append(("op",) + local[t])
                else:
                    if t not in ins:
                        ins.append(t)
                    refs.append(("in", ins.index(t)))
            in_nhwc = tuple(bool(self.plan.get(t)) for t in op.inputs)
            out_nhwc = op_runs_nhwc(op, self.plan)
            wiring.append(tuple(refs))
            sigs.append(op_signature(op, self.params, in_nhwc, out_nhwc))
            layouts.append((in_nhwc, out_nhwc))
            for s, t in enumerate(op.outputs):
                local[t] = (j, s)
        out_refs = tuple(local[t] for t in outs)
        key = ("float_block", tuple(sigs), tuple(wiring), out_refs)

        def make():
            def f(weights, acts, _ops=tuple(ops), _wiring=tuple(wiring), _layouts=tuple(layouts)):
                vals: list[list] = []
                for op, refs, (in_nhwc, out_nhwc), w in zip(_ops, _wiring, _layouts, weights):
                    xs = [acts[r[1]] if r[0] == "in" else vals[r[1]][r[2]] for r in refs]
                    with per_op_executable():  # as traced alone (no op of a block depends on it: block_plan)
                        vals.append(run_op_planned(op, w, xs, in_nhwc, out_nhwc))
                return [vals[j][s] for j, s in out_refs]

            return PersistentJit(key, f)

        hit = self._block_exes[memo] = (self.cache.get(key, make), tuple(ins))
        return hit

    def call(self, fn, weights, acts, *extra):
        """Call a jitted executable; the first call per (executable, input shapes) is timed as a compile."""
        self.stats.calls += 1
        if extra and self.placement.sharded:
            extra = self.placement.args(extra)
        sk = (tuple((tuple(a.shape), str(a.dtype)) for a in acts), tuple(np.shape(x) for x in extra))
        if not self.cache.first_call(fn, sk):
            return fn(weights, acts, *extra)
        t = time.perf_counter()
        out = jax.block_until_ready(fn(weights, acts, *extra))
        self.stats.first_call_s += time.perf_counter() - t
        self.stats.traces += 1
        return out

    def weights(self, op: Op) -> dict[str, Any]:
        params = self.placement.weights(self.params)
        return {r: params[k] for r, k in op.weights}

    # ------------------------------------------------------------------------------------------ running
    def input_env(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        # device_put, not jnp.asarray: eager jnp.asarray of a host array compiles a small 'stage' program
        return {n: self.to_plan(n, self.placement.put(inputs[n])) for n in self.graph.inputs}

    def run(self, env: dict[str, Any], start: int = 0, stop: int | None = None, *, keep: Sequence[str] = (),
            on_output=None, int8_tensors: Sequence[str] = (), blocks: bool = False) -> dict[str, Any]:
        """Advance ``env`` (tensors in plan layout) through ops ``[start, stop)``; drop dead tensors.

        ``on_output(tensor, value)`` is called for every tensor produced (streaming consumers such as the
        calibration statistics), so nothing beyond the live set needs to be kept.  ``int8_tensors``: tensors of
        ``env`` an INT8 op wrote (dequantized; matters to F16 / BF16 float ops only, see :meth:`float_exe`).
        ``blocks``: run the :meth:`block_plan`'s blocks that lie inside ``[start, stop)`` as one executable each
        (without ``on_output`` only; the same values and the same ``env`` afterwards)."""
        g = self.graph
        stop = len(g.ops) if stop is None else stop
        keep = set(keep)
        env = dict(env)
        int8_t = set(int8_tensors) if self.float_type != "F32" else set()
        plan = self.block_plan() if blocks and on_output is None else {}
        i = start
        while i < stop:
            b = plan.get(i)
            if b is not None and b <= stop:
                self.run_block(env, i, b, keep)
                i = b
                continue
            if g.ops[i].type != "Input":
                self._run_op(env, i, keep, on_output, int8_t)
            i += 1
        return env

    def _run_op(self, env: dict[str, Any], i: int, keep: set, on_output, int8_t: set) -> None:
        """Op ``i`` on its own executable, ``env`` updated in place (outputs added, inputs read last dropped)."""
        op = self.graph.ops[i]
        last = self.graph.last_use
        int8_in = frozenset(t for t in op.inputs if t in int8_t) if int8_t else frozenset()
        fn = self.float_exe(i, int8_in) if int8_in else self.float_exe(i)
        if int8_in and op.type in FLOAT_TYPE_FOLLOWS_INPUT:  # a reshape takes its input's type
            int8_t.update(op.outputs)
        # block per op: with asynchronous dispatch every output buffer of the whole graph would be
        # allocated before the first op finishes (peak RSS = all activations instead of the live set)
        outs = jax.block_until_ready(self.call(fn, self.weights(op), [env[t] for t in op.inputs]))
        for t, v in zip(op.outputs, outs):
            env[t] = v
            if on_output is not None:
                on_output(t, v)
        for t in set(op.inputs):
            if last.get(t, -1) <= i and t not in keep:
                env.pop(t, None)

    def run_block(self, env: dict[str, Any], a: int, b: int, keep: set) -> None:
        """Ops ``[a, b)`` as one executable, ``env`` updated in place as the op-by-op run leaves it: every tensor
        made, less those whose last reader is inside the block (unless kept); inputs read last here dropped."""
        g = self.graph
        last = g.last_use
        read = {t for op in g.ops[a:b] for t in op.inputs}
        outs = tuple(t for op in g.ops[a:b] for t in op.outputs
                     if t in keep or not (t in read and last.get(t, -1) < b))
        fn, ins = self.block_exe(a, b, outs)
        # blocked once per block (as per op): the live set, not every buffer of the suffix, is allocated
        vals = jax.block_until_ready(self.call(fn, tuple(self.weights(op) for op in g.ops[a:b]),
                                               [env[t] for t in ins]))
        env.update(zip(outs, vals))
        for t in ins:
            if last.get(t, -1) < b and t not in keep:
                env.pop(t, None)

    def outputs(self, env: Mapping[str, Any]) -> dict[str, Any]:
        g = self.graph
        return {name: self.to_nchw(t, env[t]) for name, t in zip(g.output_names, g.outputs)}

