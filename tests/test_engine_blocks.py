"""The Engine's multi-op float blocks (``Engine.block_plan``, ``Engine.run(..., blocks=True)``).

A block runs several float ops as one executable (the search's float suffixes use them).  It must leave exactly
the env the op-by-op run leaves: the same tensors, the same float32 bits, from every start op."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from qsens.engine import BLOCK_OPS, BLOCK_TYPES, Engine
from qsens.onnx import to_jax

CPU = jax.default_backend() == "cpu"


def _engine(zoo, name: str, batch: int) -> Engine:
    fn, _ = to_jax(str(zoo / name))
    return Engine(fn.model, batch)


def _envs(eng: Engine):
    """``at(s)``: the live tensors before op ``s`` of one float forward (random inputs, fixed seed)."""
    g = eng.graph
    made = {t: i for i, op in enumerate(g.ops) for t in op.outputs}
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(g.inputs, g.input_shapes)}
    full = eng.run(eng.input_env(x), 0, keep=list(g.tensors))

    def at(s: int) -> dict:
        return {t: v for t, v in full.items() if made.get(t, 0) < s and g.last_use.get(t, -1) >= s}

    return at


def _same_env(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for t in a:
        np.testing.assert_array_equal(np.asarray(a[t]), np.asarray(b[t]), err_msg=t)


@pytest.mark.parametrize("name,batch", [("efficientnet_lite0.onnx", 2), ("mnist_mbv2.onnx", 3),
                                        ("mtcnn_onet.onnx", 2)])
def test_blocks_leave_the_op_by_op_env_from_every_start(zoo, name, batch):
    eng = _engine(zoo, name, batch)
    plan = eng.block_plan()
    assert plan, "the model has blocks"
    at = _envs(eng)
    n = len(eng.graph.ops)
    for s in range(1, n):  # inside a block, at its first op, between blocks
        _same_env(eng.run(at(s), s), eng.run(at(s), s, blocks=True))
    used = {eng.block_exe(a, b, outs)[0] for (a, b, outs) in eng._block_exes}
    assert len(used) >= len(plan)  # the blocks did run (one executable per block and output set)


def test_blocks_with_stop_and_kept_intermediates(zoo):
    eng = _engine(zoo, "efficientnet_lite0.onnx", 1)
    at = _envs(eng)
    a, b = next(iter(eng.block_plan().items()))
    g = eng.graph
    inner = g.ops[a].outputs[0]  # read inside the block only: dropped unless kept
    assert g.last_use[inner] < b
    for keep in ((), (inner,)):
        for stop in (b, b + 3, len(g.ops)):
            _same_env(eng.run(at(a), a, stop, keep=keep), eng.run(at(a), a, stop, keep=keep, blocks=True))
    assert inner in eng.run(at(a), a, b, keep=(inner,), blocks=True)
    assert inner not in eng.run(at(a), a, b, blocks=True)
    # a stop inside a block runs that block's ops one by one
    _same_env(eng.run(at(a), a, b - 1), eng.run(at(a), a, b - 1, blocks=True))


@pytest.mark.skipif(not CPU, reason="the strided depthwise rule is the CPU's (layout.traced_alone_differs)")
def test_lite0_block_plan(zoo):
    eng = _engine(zoo, "efficientnet_lite0.onnx", 1)
    g = eng.graph
    plan = eng.block_plan()
    assert plan == {1: 4, 5: 11, 12: 18, 19: 25, 25: 31, 31: 37, 37: 40, 41: 47, 47: 53, 53: 57, 58: 60}
    strided_dw = [i for i, op in enumerate(g.ops)
                  if op.type == "Conv" and op.attr("group", 1) > 1 and max(op.attr("strides")) > 1]
    assert strided_dw == [4, 11, 18, 40]
    # measured: inside a block with its neighbours these four change bits (XLA fuses and contracts across them)
    assert not any(a <= i < b for i in strided_dw for a, b in plan.items())


def test_block_plan_rules(zoo):
    for name in ("efficientnet_lite0.onnx", "mnist_mbv2.onnx", "mtcnn_onet.onnx"):
        eng = _engine(zoo, name, 1)
        ops = eng.graph.ops
        last = 0
        for a, b in sorted(eng.block_plan().items()):
            assert 2 <= b - a <= BLOCK_OPS and a >= last
            assert all(op.type in BLOCK_TYPES for op in ops[a:b])
            last = b
    onet = _engine(zoo, "mtcnn_onet.onnx", 1)
    in_block = {i for a, b in onet.block_plan().items() for i in range(a, b)}
    prelu = [i for i, op in enumerate(onet.graph.ops) if op.type == "PRelu"]
    assert prelu and not in_block & set(prelu)  # a multiply ends PRelu's arithmetic: never fused into a block


def test_blocks_off_for_streaming_consumers(zoo):
    """With ``on_output`` (the calibration's statistics see every tensor) the op-by-op run is kept."""
    eng = _engine(zoo, "mnist_mbv2.onnx", 2)
    at = _envs(eng)
    seen_a, seen_b = [], []
    eng.run(at(1), 1, on_output=lambda t, v: seen_a.append(t))
    eng.run(at(1), 1, on_output=lambda t, v: seen_b.append(t), blocks=True)
    assert seen_a == seen_b == [t for op in eng.graph.ops[1:] for t in op.outputs]


def test_mixed_runs_use_blocks_where_all_their_ops_are_float(tmp_path):
    """``advance_mixed`` (mixed models: the summary, greedy and leave-one-out searches, run_qtable's steps) runs a
    block as one executable only when every op in it is float; the env equals the op-by-op run's, bit for bit."""
    try:
        import search_models as sm
    except ImportError:
        from tests import search_models as sm
    from qsens.calibrate import calibrate
    from qsens.pipeline import load_inputs
    from qsens.search.evaluators import advance_mixed
    from qsens.search.problem import Problem
    from qsens.tables import CaliTable

    fn, _ = to_jax(sm.save(sm.resnet_ish(blocks=3, seed=5), tmp_path / "net.onnx"))
    sm.npy_dataset(tmp_path / "data", n=8, seed=1)
    files = sorted(str(p) for p in (tmp_path / "data").glob("*.npy"))
    cal = calibrate(fn.model, files, None, methods=("kl",), tune_num=0, progress=False)
    pb = Problem.from_table(fn.model, CaliTable(cal.table_entries("kl", True)), load_inputs(files[:6], fn.graph, None),
                            chunk=4)
    plan = pb.engine.block_plan()
    assert plan
    ops = [op.name for op in pb.graph.ops]
    a, b = next(iter(plan.items()))
    th_eff = pb.plan.effective(np.asarray(pb.th0, np.float32))
    calls = []
    real = pb.engine.run_block
    pb.engine.run_block = lambda *args: (calls.append(args[1:3]), real(*args))[1]
    for int8_ops in (set(), set(ops), {ops[a]}, set(ops[b:]), set(ops[:a + 1])):
        calls.clear()
        got = [advance_mixed(pb, pb.engine.input_env(part), th_eff, int8_ops) for part in pb.chunks]
        used = set(calls)
        want = [advance_mixed(pb, pb.engine.input_env(part), th_eff, int8_ops, blocks=False) for part in pb.chunks]
        for x, y in zip(got, want):
            _same_env(x, y)
        float_blocks = {(s, e) for s, e in plan.items() if not int8_ops & set(ops[s:e])}
        assert used == float_blocks  # every all-float block ran whole, no block holding an INT8 op did
