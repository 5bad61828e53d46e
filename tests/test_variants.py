"""Search variants (qsens.search.variants, ``qsens search --variant``): exact fast evaluation, the interaction
case top-N misses, resume after SIGKILL, output files, errors.

Models are generated (tests/search_models.py and a dead-zone net built here) and tiny.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from onnx import helper

try:
    import search_models as sm
    from cli_util import gate_file, kill_at_gate, one_line_error, run_cli
    from onnx_builders import init, make_model, vi
except ImportError:
    from tests import search_models as sm
    from tests.cli_util import gate_file, kill_at_gate, one_line_error, run_cli
    from tests.onnx_builders import init, make_model, vi

from qsens.calibrate import calibrate
from qsens.onnx import to_jax
from qsens.pipeline import load_inputs
from qsens.search import VARIANTS
from qsens.search import variants as V
from qsens.search.evaluators import Config, WholeGraph
from qsens.search.job import CKPT
from qsens.search.problem import Problem
from qsens.search.selectors import Sensitivity, TopN
from qsens.tables import CaliTable

TOL = 1e-6


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """resnet_ish (14 ops), 6 inference samples in chunks of 4 (the last chunk padded), KL table, bounds."""
    d = tmp_path_factory.mktemp("variants")
    fn, _ = to_jax(sm.save(sm.resnet_ish(blocks=3, seed=5), d / "net.onnx"))
    data = sm.npy_dataset(d / "data", n=8, seed=1)
    files = sorted(str(p) for p in (d / "data").glob("*.npy"))
    cal = calibrate(fn.model, files, None, methods=("max", "percentile9999", "kl"), tune_num=0, progress=False)
    table = CaliTable(cal.table_entries("kl", True))
    pb = Problem.from_table(fn.model, table, load_inputs(files[:6], fn.graph, None), chunk=4)
    bounds = {t: (0.6 * cal.stats[t].abs_max, float(cal.stats[t].abs_max)) for t in fn.graph.tensors}
    return {"pb": pb, "bounds": bounds, "data": data, "model": str(d / "net.onnx")}


def _whole(pb, cfg):
    return WholeGraph().losses(pb, [cfg])[0]


def _config_of(pb, e, th):
    if "float" in e:
        return Config(V.all_ops(pb) - set(e["float"]), th)
    return Config(frozenset(e["int8"]), th)


# ------------------------------------------------------------------------------------------------ 1. exactness
def test_mixed_prefix_equals_whole_graph(small):
    """One walk on an all-INT8 prefix: every leave-one-out loss equals a whole-graph run of that configuration."""
    pb = small["pb"]
    w = V.Walker(pb)
    st = {"th": [float(v) for v in pb.th0], "evals": []}
    losses = V.leave_one_out_walk(pb, w, st, "t")
    assert len(losses) == len(V.int8_capable(pb)) == 13
    for o, l in losses.items():
        assert abs(l - _whole(pb, Config(V.all_ops(pb) - {o}, pb.th0))) <= TOL, o
    assert w.counts == {"walks": 1, "suffix_runs": 13, "whole_runs": 0, "fallbacks": 0}
    assert len(set(np.round(list(losses.values()), 9))) > 5  # the ops genuinely differ


def test_mixed_prefix_falls_back_when_the_prefix_differs(small):
    pb = small["pb"]
    w = V.Walker(pb)
    ops = V.int8_capable(pb)
    base = Config(V.all_ops(pb), pb.th0)
    odd = Config(V.all_ops(pb) - {ops[0], ops[5]}, pb.th0)  # differs before op 5's position: run whole
    pos = {op.name: i for i, op in enumerate(pb.ops)}
    got = w.walk(base, {pos[ops[5]]: [odd]})[pos[ops[5]]][0]
    assert w.counts["fallbacks"] == 1 and w.counts["suffix_runs"] == 0
    assert got == pytest.approx(_whole(pb, odd), abs=TOL)


def test_advance_hands_back_the_old_chunks_and_the_old_carry_stays_valid(small):
    """Advancing a carry empties its chunks one by one (the cache never doubles: Lite2 peaked at twice its budget
    before); a carry whose chunks were taken recomputes them from the inputs, with the same losses."""
    from qsens.search.evaluators import FloatPrefix, advance_envs

    calls = []
    old = [{"a": 1}, None, {"a": 2}]
    assert advance_envs(old, lambda e: calls.append(e) or {"a": e["a"] + 10}) == [{"a": 11}, None, {"a": 12}]
    assert old == [None, None, None] and calls == [{"a": 1}, {"a": 2}]
    assert advance_envs(({"a": 1}, None), lambda e: {"a": 0}) == [{"a": 0}, None]  # a tuple is mapped, not taken

    pb = small["pb"]
    ev = FloatPrefix()
    carry = ev.init(pb, 3)
    assert len(carry.envs) == 2 and all(e is not None for e in carry.envs)  # 6 samples, chunks of 4: 2 resident
    op = pb.ops[3]
    cfgs = [Config(frozenset({op.name}), pb.th0), Config(frozenset({op.name}), pb.th0 * np.float32(0.7))]
    before = ev.losses(pb, cfgs, carry)
    nxt = ev.advance(pb, carry)
    assert carry.envs == [None, None] and nxt.next == 4 and all(e is not None for e in nxt.envs)
    assert ev.losses(pb, cfgs, carry) == before  # recomputed from the inputs: the same values
    assert before == [pytest.approx(_whole(pb, c), abs=TOL) for c in cfgs] and before[0] != before[1]


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_evaluations_equal_whole_graph(small, name):
    """Every configuration a variant scored (and the one it chose) has the loss a whole-graph run gives."""
    pb = small["pb"]
    v = V.make_variant(name, expected_cos=0.99999, max_float_layers=3, grid_size=4, grid_bounds=small["bounds"],
                       top_k=5, optax_steps=6)
    st = V.run_variant(pb, v)
    assert st["done"] and st["evals"]
    th_final = np.asarray(st["th"], np.float32)
    checked = 0
    for e in st["evals"]:
        if "float" in e or "int8" in e:
            th = th_final if e["phase"] in ("ordered", "leave_one_out") and name.startswith("threshold") else pb.th0
            assert abs(e["loss"] - _whole(pb, _config_of(pb, e, th))) <= TOL, (name, e)
            checked += 1
    assert checked >= 5
    fl = st["float_layers"]
    assert len(fl) <= 3 and set(fl) <= set(V.int8_capable(pb))
    if name == "grad_screen":  # only the top_k of the screen are scored exactly
        exact = [e for e in st["evals"] if e["phase"] == "exact_top_k"]
        assert [e["float"][0] for e in exact] == st["screen_order"][:5] and len(st["screen_order"]) == 13
        assert st["grad"]["loss"] == pytest.approx(_whole(pb, Config(V.all_ops(pb), pb.th0)), abs=TOL)
    if name == "threshold_optax":
        assert st["int8_after"] >= st["int8_before"] and len(st["history"]) == 6
        assert 1 - st["int8_after"] == pytest.approx(_whole(pb, Config(V.all_ops(pb), th_final)), abs=TOL)
    if name == "threshold_grid":  # the last grid choice's loss is the new table's all-INT8 loss
        assert abs(st["best_loss"] - _whole(pb, Config(V.all_ops(pb), th_final))) <= TOL
        assert st["int8_after"] >= st["int8_before"]
        grid = [e for e in st["evals"] if e["phase"] == "grid"]
        assert len({e["tensor"] for e in grid}) == 13 and len(grid) > 13 * 3


def test_auto_n_curve_is_monotone_and_greedy(small):
    pb = small["pb"]
    st = V.run_variant(pb, V.make_variant("auto_n", expected_cos=0.99999, max_float_layers=3))
    sims = [c[1] for c in st["curve"]]
    assert [c[0] for c in st["curve"]] == [0, 1, 2, 3]
    # each step's pick is the best of that step's candidates
    for k, op in enumerate(st["float_layers"]):
        step = [e for e in st["evals"] if e["phase"] == "greedy" and len(e["float"]) == k + 1
                and e["float"][:k] == st["float_layers"][:k]]
        assert len(step) == 13 - k
        assert min(e["loss"] for e in step) == pytest.approx(1 - sims[k + 1], abs=1e-12)
        assert min(step, key=lambda e: e["loss"])["float"][-1] == op


# ------------------------------------------------------------------------------------------------ 2. interaction
def dead_zone_net():
    """Two branches a, b (1x1 Conv+Relu, identical) reach Add through F32 Clips (no INT8 cast of a, b there), then
    a float dead zone Clip(s, -1, 12) and Add with a third branch c.  With the table below each of a, b in INT8
    clips its peaks 10 -> 4, which the dead zone hides (4 + 10 >= 12); both clip to 8 < 12: harmful together."""
    one = np.ones((2, 1, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", f"w{k}"], [f"c{k}"], name=f"conv{k}") for k in "abc"]
    nodes += [helper.make_node("Relu", [f"c{k}"], [k], name=f"relu{k}") for k in "abc"]
    nodes += [helper.make_node("Clip", ["a", "lo", "big"], ["za"], name="clipa"),
              helper.make_node("Clip", ["b", "lo", "big"], ["zb"], name="clipb"),
              helper.make_node("Add", ["za", "zb"], ["s"], name="adds"),
              helper.make_node("Clip", ["s", "lo", "hi"], ["z"], name="clip"),
              helper.make_node("Add", ["z", "c"], ["y"], name="addy")]
    inits = [init(f"w{k}", one) for k in "abc"] + [init("lo", np.float32(-1.0)), init("hi", np.float32(12.0)),
                                                    init("big", np.float32(100.0))]
    return make_model(nodes, [vi("x", ["N", 1, 6, 6])], [vi("y", ["N", 2, 6, 6])], inits)


def test_auto_n_finds_the_harmful_pair_top_n_misses(tmp_path):
    fn, _ = to_jax(sm.save(dead_zone_net(), tmp_path / "dz.onnx"))
    rng = np.random.default_rng(0)
    x = (np.where(rng.random((8, 1, 6, 6)) < 0.3, 10.0, 1.0) + rng.uniform(0, 0.3, (8, 1, 6, 6))).astype(np.float32)
    mx = 10.3
    th = {"x": mx, "a_Relu": 4.0, "b_Relu": 4.0, "za_Clip": mx, "zb_Clip": mx, "c_Relu": 8.0, "s_Add": 2 * mx,
          "z_Clip": 12.0, "y_Add": 12.0 + mx}
    assert set(th) == set(fn.graph.tensors)
    pb = Problem.from_table(fn.model, CaliTable({t: (v, 0.0, v) for t, v in th.items()}), {"x": x})
    w = V.Walker(pb)
    alone = V.leave_one_in_walk(pb, w, {"th": list(pb.th0), "evals": []}, "t")
    pair = _whole(pb, Config(frozenset({"a_Relu", "b_Relu"}), pb.th0))
    assert max(alone["a_Relu"], alone["b_Relu"]) < 1e-6  # individually harmless
    assert pair > 100 * (alone["a_Relu"] + alone["b_Relu"]) and pair > 5e-4  # harmful together
    top, _ = TopN(2).select([Sensitivity(o, l, pb.graph.op(o).type) for o, l in alone.items()], pb.graph)
    assert not {"a_Relu", "b_Relu"} & set(top)  # TPU-MLIR's top-N never sees the pair
    st = V.run_variant(pb, V.make_variant("auto_n", expected_cos=0.99999, max_float_layers=2))
    assert st["float_layers"][0] in ("a_Relu", "b_Relu")
    sim_auto = 1 - _whole(pb, Config(V.all_ops(pb) - set(st["float_layers"]), pb.th0))
    sim_top = 1 - _whole(pb, Config(V.all_ops(pb) - set(top), pb.th0))
    assert sim_auto == pytest.approx(st["curve"][-1][1], abs=TOL)
    assert sim_auto > sim_top + 5e-4


# ------------------------------------------------------------------------------------------------ 3. units, costs
def test_neighbour_units_and_interaction(small):
    pb = small["pb"]
    v = V.make_variant("neighbour", max_float_layers=3, unit_len=2)
    units = v.units(pb)
    singles = [u for u in units if len(u) == 1]
    pairs = [u for u in units if len(u) == 2]
    assert len(singles) == 13 and ["r0_Relu", "r0a_Relu"] in pairs and ["c0b_Conv", "a0_Add"] in pairs
    for u in pairs:  # producer -> consumer
        assert any(pb.graph.producer(t).name == u[0] for t in pb.graph.op(u[1]).inputs)
    st = V.run_variant(pb, v)
    rows = {tuple(r["unit"]): r for r in st["units_scored"]}
    for u in pairs:
        r = rows[tuple(u)]
        assert r["interaction"] == pytest.approx(r["loss"] - rows[(u[0],)]["loss"] - rows[(u[1],)]["loss"], abs=1e-12)
        assert r["loss"] == pytest.approx(_whole(pb, Config(frozenset(u), pb.th0)), abs=TOL)


def test_op_costs_and_pareto(small):
    pb = small["pb"]
    c = V.op_costs(pb)
    # r0_Relu: 3x3 conv 3 -> 6 channels on 12x12: 6*12*12 outputs x 27 MACs; y_Gemm: 7 outputs x 6
    assert c["r0_Relu"]["macs"] == 6 * 12 * 12 * 27 and c["y_Gemm"]["macs"] == 7 * 6
    assert c["a0_Add"]["macs"] == 0 and c["a0_Add"]["bytes_f32"] == 4 * 6 * 12 * 12
    pts = [{"macs": 0, "similarity": 0.9}, {"macs": 10, "similarity": 0.95}, {"macs": 20, "similarity": 0.94},
           {"macs": 30, "similarity": 0.99}]
    assert V.pareto_front(pts) == [0, 1, 3]
    st = V.run_variant(pb, V.make_variant("cost_aware", expected_cos=0.99999, max_float_layers=4,
                                          float_budget_macs=0.2))
    total = sum(v["macs"] for v in c.values())
    assert st["budget_macs"] == pytest.approx(0.2 * total)
    assert sum(c[o]["macs"] for o in st["float_layers"]) <= st["budget_macs"]
    assert st["front"] and all(0 <= i < len(st["points"]) for i in st["front"])


def test_kendall_tau():
    assert V.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert V.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert V.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ 4. CLI, resume
def _argv(small, out, *extra):
    return ["search", small["model"], "--dataset", small["data"], "--input_num", "8", "--inference_num", "4",
            "--tune_num", "1", "--expected_cos", "0.99999", "--out_dir", str(out), "-q", "--max_float_layers", "3",
            *extra]


def test_cli_variant_outputs(small, tmp_path, capsys):
    out = tmp_path / "o"
    rc, stdout, _ = run_cli(_argv(small, out, "--variant", "leave_one_out"), capsys)
    assert rc == 0 and "success leave_one_out search" in stdout
    res = json.loads((out / "search.json").read_text())
    q = [ln.split()[0] for ln in (out / "qtable").read_text().splitlines() if ln and not ln.startswith("#")]
    assert q == res["float_layers"] and len(q) == 3
    assert (out / "new_cali_table.txt").read_text().splitlines()[-1] and (out / "variant.png").stat().st_size > 0
    assert res["summary"]["n_thresholds_changed"] == 0 and res["counts"]["walks"] == 1
    assert f"float layers (3): {', '.join(q)}" in stdout
    assert "INFO:root:set_fp_layer_list = " in (out / "SensitiveLayerSearch").read_text()


def test_cli_variant_resume_after_sigkill(small, tmp_path, capsys):
    post = tmp_path / "post.py"
    gate_file(post, "len(ck['curve']) >= 2")
    full = tmp_path / "full"
    rc, _, _ = run_cli(_argv(small, full, "--variant", "auto_n", "--post_process", str(post)), capsys)
    assert rc == 0
    out = tmp_path / "out"
    kill_at_gate(_argv(small, out, "--variant", "auto_n", "--post_process", str(post)), out / CKPT, tmp_path,
                 "an auto_n checkpoint with one finished step")
    rc, stdout, _ = run_cli(_argv(small, out, "--variant", "auto_n", "--post_process", str(post), "--resume"), capsys)
    assert rc == 0 and re.search(r"resuming: auto_n from .* \(\d+ evaluations done\)", stdout)
    for name in ("qtable", "new_cali_table.txt"):
        assert (out / name).read_bytes() == (full / name).read_bytes(), name
    a, b = (json.loads((d / "search.json").read_text()) for d in (out, full))
    for k in ("float_layers", "summary", "state", "settings"):
        assert a[k] == b[k], k


def test_cli_variant_errors(small, tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        run_cli(_argv(small, tmp_path / "e", "--variant", "nope"), capsys)
    assert ex.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    rc, _, err = run_cli(_argv(small, tmp_path / "e", "--variant", "neighbour", "--unit_len", "0"), capsys)
    one_line_error(rc, err, "--unit_len 0")


def test_abs_percentile_from_histogram():
    from qsens.calib.methods import CalibResult
    from qsens.calib.methods import histogram_abs_percentile as abs_percentile

    h = np.zeros(2048, np.float32)
    h[:999] = 1.0  # 999 of 1000 counts in the first 999 bins, the last one far out
    h[1999] = 1.0
    r = CalibResult(min=-4.0, max=4.0, abs_max=4.0, kl=0, p99=0, p99_min=0, p99_max=0, mse=0, histogram=h,
                    width=4.0 / 2048)
    assert abs_percentile(r, 99.9) == pytest.approx(999 * 4.0 / 2048)  # upper edge of bin 998
    assert abs_percentile(r, 100.0) == pytest.approx(2000 * 4.0 / 2048)
    empty = CalibResult(min=0, max=0, abs_max=3.0, kl=0, p99=0, p99_min=0, p99_max=0, mse=0,
                        histogram=np.zeros(0, np.float32), width=0.0)
    assert abs_percentile(empty, 99.9) == 3.0  # no histogram (a resumed calibration): the max
