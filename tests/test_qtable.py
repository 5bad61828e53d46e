"""``qsens qtable`` (TPU-MLIR ``run_qtable.py``, spec §5) on generated nets: files, prefix == whole graph,
resume after SIGKILL, errors.  Fidelity against the real tool: tests/test_tpu_mlir_qtable.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

try:
    import search_models as sm
    import tpu_mlir_parser as ref
    from cli_util import EPOCH, gate_file, kill_at_gate, one_line_error, run_cli
except ImportError:
    from tests import search_models as sm
    from tests import tpu_mlir_parser as ref
    from tests.cli_util import EPOCH, gate_file, kill_at_gate, one_line_error, run_cli

from qsens import cli
from qsens.metrics import cos_sim
from qsens.search.evaluators import Config, mixed_similarity
from qsens.search.mixprec import Int8Prefix, MixPrecision, all_int8_similarity
from qsens.search.problem import Problem


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A 14-op residual net, 10 .npy samples, a calibration table (KL, tuned) made by `qsens calibrate`."""
    d = tmp_path_factory.mktemp("qt")
    model = sm.save(sm.resnet_ish(blocks=3, hw=12, seed=5), d / "net.onnx")
    data = sm.npy_dataset(d / "data", n=10, shape=(1, 3, 12, 12), seed=1)
    table = d / "cali_table"
    assert cli.main(["calibrate", model, "--dataset", data, "--input_num", "8", "--tune_num", "1", "-q",
                     "-o", str(table)]) == 0
    post = gate_file(d / "post.py", 'ck["next"] >= 3')  # blocks once the qtable checkpoint has walked 3 ops
    return {"dir": d, "model": model, "data": data, "table": str(table), "post": post}


def argv(net, out, *extra, min_layer_cos="0.99999", expected_cos="0.999999"):
    return ["qtable", net["model"], "--dataset", net["data"], "--input_num", "6", "--calibration_table",
            net["table"], "--expected_cos", expected_cos, "--min_layer_cos", min_layer_cos, "--out_dir", str(out),
            "-q", *extra]


@pytest.fixture(scope="module")
def full(net, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        mp.delenv("QSENS_TEST_GATE", raising=False)
        assert cli.main(argv(net, out, "--post_process", net["post"])) == 0
    return out


def test_outputs(full):
    q = json.loads((full / "qtable.json").read_text())
    st = q["state"]
    # 14 ops -> at most 14 // 4 = 3 float layers before the search fails
    assert st["max_fp_layers"] == 3 and st["end"] in ("fail", "success", "exhausted")
    assert len(st["steps"]) >= 1 and st["layer_cos"]
    # qtable: the float list, parsed by the independent parser (TPU-MLIR's C++ rules)
    ops = ref.cpp_qtable(full / "qtable")
    assert list(ops) == list(dict.fromkeys(st["fp_list"])) == q["float_layers"]
    text = (full / "qtable").read_text().splitlines()
    assert text[:3] == ["# genetated time: 2023-11-14 22:13:20", "# sample number: 6", "# chip: bm1684  mix_mode: F32"]
    # full_loss_table.txt: TPU-MLIR's format, layer cos ascending
    lines = (full / "full_loss_table.txt").read_text().splitlines()
    assert lines[:4] == ["# genetated time: 2023-11-14 22:13:20", "# sample number: 6", "# chip: bm1684  mix_mode: F32", "###"]
    rows = [re.fullmatch(r"No\.(\d+)\s*: Layer: (\S+)\s+\t\t\tCos: (\d\.\d{6})", ln) for ln in lines[4:]]
    assert all(rows) and [int(m.group(1)) for m in rows] == list(range(len(rows)))
    assert [float(m.group(3)) for m in rows] == sorted(round(c, 6) for _, c in st["layer_cos"])
    # the log: TPU-MLIR's lines
    log = (full / "MixPrecSearcher").read_text().splitlines()
    assert log[:2] == ["INFO:root:run float mode: net.onnx", "INFO:root:run int8 mode: net.onnx"]
    assert "INFO:root:>>>run result:" in log
    assert f"INFO:root:int8 outputs_cos:{st['all_int8_cos']:.6f} old" in log
    assert f"INFO:root:mix model outputs_cos:{st['outputs_cos']:.6f}" in log
    assert log[-2] == "INFO:root:Output mix quantization table to qtable" and log[-1].startswith("INFO:root:total time:")
    # qsens reports the qtable's true similarity beside TPU-MLIR's last-step value
    assert 0.5 < q["true_mix_similarity"] <= 1.0
    assert (full / "layer_cos.png").stat().st_size > 1000
    assert not (full / "qtable.ckpt.json").exists() and not (full / "qtable.ckpt.npz").exists()


@pytest.fixture(scope="module")
def problem(net):
    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import load_inputs
    from qsens.tables import read_cali_table

    fn, _ = to_jax(net["model"])
    x = load_inputs(select_files(net["data"], input_num=6), fn.graph, None)
    return Problem.from_table(fn.model, read_cali_table(net["table"]), x)


def whole_graph_tensors(problem, fp_list):
    """Every tensor of the mixed model (``fp_list`` float) run from the input, per chunk (engine layout)."""
    g = problem.graph
    th_eff = problem.plan.effective(problem.th0)
    int8_ops = {op.name for op in g.ops} - set(fp_list)
    envs = []
    for part in problem.chunks:
        env = problem.engine.input_env(part)
        keep = set(g.tensors)
        e = problem.engine
        from qsens.search.evaluators import run_int8_op

        for i, op in enumerate(g.ops):
            if op.type == "Input":
                continue
            if op.name in int8_ops and op.name not in problem.plan.f32_reason:
                v = run_int8_op(problem, e, i, env, th_eff, [th_eff[problem.plan.tensor_index[op.outputs[0]]]])[0]
            else:
                v = e.call(e.float_exe(i), e.weights(op), [env[t] for t in op.inputs])[0]
            env[op.outputs[0]] = v
        envs.append({t: env[t] for t in keep if t in env})
    return envs


def test_prefix_equals_whole_graph(problem):
    """Every decision of the INT8-prefix walk re-derived from whole-graph runs of the mixed model: the layer cos
    of each op (cached INT8 prefix == the mixed model of the float list so far), and each step's outputs cos
    (run from the op == the whole mixed model) when the step's inputs come from the INT8 cache (TPU-MLIR feeds
    float-model values for float inputs, which a whole-graph run cannot reproduce)."""
    from qsens.search.mixprec import run_mix_precision

    # the threshold between the two lowest layer cos of a walk without steps: one float step, then the walk goes on
    cos = sorted(c for _, c in run_mix_precision(problem, MixPrecision(0.999999, 0.0))["layer_cos"])
    strategy = MixPrecision(expected_cos=0.999999, min_layer_cos=(cos[0] + cos[1]) / 2)
    ev = Int8Prefix()
    state = strategy.init(problem, all_int8_similarity(problem))
    carry = ev.init(problem)
    g = problem.graph
    ref_envs = whole_graph_tensors(problem, [n for n in []])  # noqa: C416 - all INT8
    float_envs = [problem.engine.run(problem.engine.input_env(p), keep=g.tensors) for p in problem.chunks]
    checked_layers = checked_steps = 0
    # the all-INT8 similarity is the whole-graph INT8 model's
    assert state["all_int8_cos"] == pytest.approx(
        mixed_similarity(problem, Config(frozenset(op.name for op in g.ops), problem.th0))[0], abs=1e-12)
    while not strategy.done(problem, state):
        fp_before = list(state["fp_list"])
        n_layers, n_steps = len(state["layer_cos"]), len(state["steps"])
        state, carry, _ = strategy.update(problem, state, ev, carry)
        if len(state["layer_cos"]) > n_layers:
            name, cos = state["layer_cos"][-1]
            t = g.op(name).outputs[0]
            whole = whole_graph_tensors(problem, fp_before) if fp_before else ref_envs
            want = np.mean(np.concatenate([np.asarray(cos_sim(np.asarray(w[t]), np.asarray(f[t]), batch_axis=0))[:c]
                                           for w, f, c in zip(whole, float_envs, problem.counts)]))
            assert cos == pytest.approx(float(want), abs=1e-6), name
            checked_layers += 1
        if len(state["steps"]) > n_steps:
            step = state["steps"][-1]
            op = g.op(step["op"])
            i = g.ops.index(op)
            fed = set(op.inputs) | {t for later in g.ops[i + 1:] for t in later.inputs
                                    if g.ops.index(g.producer(t)) < i}
            if not any(g.producer(t).name in fp_before for t in fed):
                fp = fp_before + [op.name] + step["next_ops"]
                whole = mixed_similarity(problem, Config(frozenset(o.name for o in g.ops) - set(fp), problem.th0))[0]
                assert step["outputs_cos"] == pytest.approx(whole, abs=1e-6), step["op"]
                checked_steps += 1
    assert checked_layers >= 5 and checked_steps >= 1


def test_resume_after_sigkill(net, full, tmp_path, capsys):
    out = tmp_path / "out"
    gate = out / "qtable.ckpt.json"
    kill_at_gate(argv(net, out, "--post_process", net["post"], "--checkpoint_every_s", "0"), gate, tmp_path)
    k = json.loads(gate.read_text())["next"]
    assert 3 <= k < 14
    for name in ("qtable", "full_loss_table.txt", "qtable.json"):  # nothing looks complete
        assert not (out / name).exists(), name
    rc, stdout, _ = run_cli(argv(net, out, "--post_process", net["post"], "--resume"), capsys)
    assert rc == 0
    assert f"resuming: {k} of 14 ops already walked in {gate}" in stdout
    for name in ("qtable", "full_loss_table.txt"):
        assert (out / name).read_bytes() == (full / name).read_bytes(), name
    a = json.loads((out / "qtable.json").read_text())
    b = json.loads((full / "qtable.json").read_text())
    assert a["state"] == b["state"] and a["true_mix_similarity"] == b["true_mix_similarity"]
    assert not gate.exists()


def test_early_exit_writes_nothing(net, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = run_cli(argv(net, out, expected_cos="0.5"), capsys)
    assert rc == 0
    assert "job success, current int8 cos:" in stdout and "no need for mix precsion" in stdout
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_error_min_layer_cos(net, tmp_path, capsys, value):
    rc, _, err = run_cli(argv(net, tmp_path / "o", min_layer_cos=value), capsys)
    one_line_error(rc, err, f"--min_layer_cos {float(value)}", "(0, 1]")
    assert not (tmp_path / "o" / "qtable").exists()


def test_error_missing_table(net, tmp_path, capsys):
    a = argv(net, tmp_path / "o")
    k = a.index("--calibration_table")
    rc, _, err = run_cli(a[:k] + a[k + 2:], capsys)
    one_line_error(rc, err, "needs --calibration_table")
    rc, _, err = run_cli(a[: k + 1] + [str(tmp_path / "nope.txt")] + a[k + 2:], capsys)
    one_line_error(rc, err, "nope.txt")


def test_error_table_not_matching(net, tmp_path, capsys):
    bad = tmp_path / "bad_table"
    lines = Path(net["table"]).read_text().splitlines()
    bad.write_text("\n".join(ln if ln.startswith("#") or not ln.strip() else "x" + ln for ln in lines) + "\n")
    a = argv(net, tmp_path / "o")
    a[a.index("--calibration_table") + 1] = str(bad)
    rc, _, err = run_cli(a, capsys)
    one_line_error(rc, err, "does not match the model", "bad_table")
    assert not (tmp_path / "o" / "qtable").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_error_out_dir_unwritable(net, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, _, err = run_cli(argv(net, ro / "sub"), capsys)
        one_line_error(rc, err, "is not writable")
    finally:
        ro.chmod(0o700)


def test_error_out_dir_is_a_file(net, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run_cli(argv(net, f), capsys)
    one_line_error(rc, err, "--out_dir", "not writable")


def test_error_other_search_checkpoint(net, full, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "qtable.ckpt.json").write_text(json.dumps({"key": "0" * 16, "next": 2, "int8_index": []}))
    rc, _, err = run_cli(argv(net, out, "--resume"), capsys)
    one_line_error(rc, err, "different qtable search")
