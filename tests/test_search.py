"""The sensitive-layer search (qsens.search, ``qsens search``): strategies, sequential thresholds, resume,
reproducibility, TPU-MLIR output files, early exit, CLI errors, analysis and the best-method rule.

Spec: shared/reference/tpu-mlir-semantics.md §4 (search), §1.3-1.4 (new_cali_table, qtable), §1.6 (log),
§8 TV-AN / TV-SEL.  Models are generated (tests/search_models.py) and tiny; one test uses the zoo's PNet.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

try:  # tests/ is a rootdir-relative path entry (no tests/__init__.py) ...
    import search_models as sm
    import tpu_mlir_parser as ref
    from cli_util import kill_at_gate, run_cli, sub_env
except ImportError:  # ... or a package
    from tests import search_models as sm
    from tests import tpu_mlir_parser as ref
    from tests.cli_util import kill_at_gate, run_cli, sub_env

from qsens import cli
from qsens.calibrate import SL_NAMES, calibrate
from qsens.metrics import similarity
from qsens.onnx import to_jax
from qsens.pipeline import load_inputs, make_preprocess, preset_for_model
from qsens.quant.mixed import MixedModel, plan_from_table, thresholds_from_table
from qsens.search.evaluators import Config, FloatPrefix, WholeGraph
from qsens.search.job import CKPT, LOG_NAME, SearchConfig, search
from qsens.search.problem import Problem as SearchProblem
from qsens.search.selectors import Sensitivity, analysis_sensitive_layers, best_method
from qsens.search.strategies import choose, distinct
from qsens.tables import CaliTable, read_cali_table, update_threshold, write_cali_table

EPOCH = "1700000000"
METHODS4 = ("max", "percentile9999", "kl", "mse")
TIE = 1e-6
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers
class Problem:
    """A converted model, its calibration (untuned: the methods disagree), a base table and inputs."""

    def __init__(self, model_path, files, pp=None, methods=METHODS4, n_inf=6, input_shapes=None):
        self.path = str(model_path)
        self.fn, self.params = to_jax(self.path, input_shapes)
        self.model = self.fn.model
        self.g = self.model.graph
        self.methods = tuple(methods)
        self.cal = calibrate(self.model, files, pp, methods=self.methods, tune_num=0, progress=False)
        self.base = CaliTable(self.cal.table_entries("kl" if "kl" in self.methods else self.methods[0], True))
        self.inputs = load_inputs(files[:n_inf], self.g, pp)

    def run(self, tmp, strategy="fast", method_batch="loop", *, base=None, method_thresholds=None, tag=None):
        cfg = SearchConfig(methods=self.methods, strategy=strategy, method_batch=method_batch, expected_cos=1.0)
        out = os.path.join(str(tmp), tag or f"{strategy}_{method_batch}")
        return search(self.model, base or self.base, method_thresholds or self.cal.tuned, self.inputs, cfg,
                      out_dir=out, progress=False, echo=lambda s: None)


def losses(op_result):
    return [c.loss for c in op_result.candidates]


def assert_same_search(a, b, tol=TIE):
    """Per-(op, method) losses within ``tol``; identical best methods except on a tie (then stop: the
    evolving tables differ from there on).  Returns the number of ops compared."""
    assert [o.op for o in a.ops] == [o.op for o in b.ops]
    for oa, ob in zip(a.ops, b.ops):
        assert [c.method for c in oa.candidates] == [c.method for c in ob.candidates]
        assert [c.threshold for c in oa.candidates] == [c.threshold for c in ob.candidates], oa.op
        np.testing.assert_allclose(losses(oa), losses(ob), rtol=0, atol=tol, err_msg=oa.op)
        if oa.best_method != ob.best_method:
            la = losses(oa)
            ka = [c.method for c in oa.candidates].index(oa.best_method)
            kb = [c.method for c in oa.candidates].index(ob.best_method)
            assert abs(la[ka] - la[kb]) < tol, f"{oa.op}: best {oa.best_method} vs {ob.best_method} without a tie"
            return a.ops.index(oa) + 1
        assert oa.best_threshold == ob.best_threshold
    return len(a.ops)


def n_discriminating(res, gap=1e-5):
    """Ops whose candidate losses really differ (so a fast/naive comparison is not vacuous)."""
    return sum(1 for o in res.ops if max(losses(o)) - min(losses(o)) > gap)


@pytest.fixture(scope="module")
def rn(tmp_path_factory):
    d = tmp_path_factory.mktemp("rn")
    model = sm.save(sm.resnet_ish(blocks=2, hw=16), d / "rn.onnx")
    sm.npy_dataset(d / "data", n=8, shape=(1, 3, 16, 16))
    files = sorted(glob.glob(str(d / "data" / "*.npy")))
    return Problem(model, files)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    model = sm.save(sm.conv_chain(hw=10), d / "chain.onnx")
    sm.npy_dataset(d / "data", n=8, shape=(1, 3, 10, 10), seed=3)
    files = sorted(glob.glob(str(d / "data" / "*.npy")))
    return Problem(model, files)


# ------------------------------------------------------------------------------------------------ 1. strategies
@pytest.mark.parametrize("which", ["rn", "chain"])
def test_fast_equals_naive(which, request, tmp_path):
    p = request.getfixturevalue(which)
    fast = p.run(tmp_path, "fast")
    naive = p.run(tmp_path, "naive")
    assert len(fast.ops) == len(p.g.ops)
    assert n_discriminating(naive) >= 2, "methods must give different losses for the comparison to mean anything"
    assert assert_same_search(fast, naive) == len(p.g.ops)
    assert fast.float_layers == naive.float_layers
    assert fast.new_thresholds == naive.new_thresholds


def test_method_batch_loop_equals_concat(rn, tmp_path):
    loop = rn.run(tmp_path, "fast", "loop")
    concat = rn.run(tmp_path, "fast", "concat")
    assert n_discriminating(loop) >= 2
    assert assert_same_search(loop, concat) == len(rn.g.ops)
    assert loop.float_layers == concat.float_layers


def test_chunk_changes_the_losses_in_the_last_bits_only(rn, tmp_path):
    """The search chunk (``memory.search_chunk``: 10 under ``--max_memory``, up to 32 without) only changes how many
    images one executable call takes: chunks of 2, 4 (the last one padded) and all 6 images give the same losses
    up to float32 summation order (XLA may block a small convolution differently per batch: found here, 2e-8),
    the same choices and the same files.  (Lite0's demo job: byte-identical at 10, 15 and 30 images.)"""
    cfg = SearchConfig(methods=rn.methods, expected_cos=1.0)
    runs = {}
    for chunk in (2, 4, 6):
        out = tmp_path / f"c{chunk}"
        runs[chunk] = search(rn.model, rn.base, rn.cal.tuned, rn.inputs, cfg, out_dir=str(out), progress=False,
                             echo=lambda s: None, chunk=chunk)
    assert n_discriminating(runs[6]) >= 2
    for chunk in (2, 4):
        assert assert_same_search(runs[chunk], runs[6], tol=1e-6) == len(rn.g.ops)
        assert runs[chunk].float_layers == runs[6].float_layers
        strip = lambda p: [ln for ln in p.read_text().splitlines() if not ln.startswith("#")]  # noqa: E731
        assert strip(tmp_path / f"c{chunk}" / "qtable") == strip(tmp_path / "c6" / "qtable")


def test_losses_match_whole_graph_mixed_model(rn, tmp_path):
    """Independent oracle: each candidate loss equals 1 - mean similarity of qsens.quant.mixed.MixedModel
    (one jit-compiled graph with a one-hot INT8 mask), with the thresholds chosen so far (sequential table)."""
    res = rn.run(tmp_path, "fast")
    g = rn.g
    plan = plan_from_table(g, rn.base)
    apply = jax.jit(MixedModel(rn.model, plan).apply)  # thresholds and mask are traced: one compile
    th = thresholds_from_table(g, rn.base)
    ref_out = rn.fn(rn.params, rn.inputs)
    idx = plan.tensor_index
    checked = 0
    for i, o in enumerate(res.ops):
        t_out = g.ops[i].outputs[0]
        for c in o.candidates:
            t = th.copy()
            t[idx[t_out]] = c.threshold
            mask = np.zeros(len(g.ops), bool)
            mask[i] = True
            out = apply(rn.params, rn.inputs, t, mask)
            want = 1.0 - float(np.mean(np.asarray(similarity(ref_out, out), np.float64)))
            assert c.loss == pytest.approx(want, abs=TIE), (o.op, c.method)
            checked += 1
        th[idx[t_out]] = o.best_threshold
    assert checked == len(g.ops) * len(METHODS4)


@pytest.mark.zoo
def test_fast_equals_naive_pnet(zoo, tmp_path):
    path = zoo / "mtcnn_pnet.onnx"
    shapes = [[1, 3, 24, 24]]
    fn, _ = to_jax(str(path), shapes)
    pp = make_preprocess(fn.graph, preset=preset_for_model(str(path)))
    files = sorted(str(f) for f in (zoo / "images").iterdir())[:8]
    # MSE included: with TPU-MLIR's backward copies (PRelu/MaxPool inputs take their consumer's threshold) and
    # 8 small images, MAX / Percentile / KL coincide on every op whose threshold still counts
    p = Problem(path, files, pp, methods=("max", "percentile9999", "kl", "mse"), n_inf=4, input_shapes=shapes)
    fast = p.run(tmp_path, "fast")
    naive = p.run(tmp_path, "naive")
    concat = p.run(tmp_path, "fast", "concat")
    assert len(fast.ops) == len(p.g.ops) == 11
    assert n_discriminating(naive, 1e-7) >= 1
    assert assert_same_search(fast, naive) == len(p.g.ops)
    assert assert_same_search(fast, concat) == len(p.g.ops)


# ------------------------------------------------------------------------------------------------ 2. sequential
def test_sequential_update_producer_threshold_reaches_consumer(chain, tmp_path):
    """c1_Conv -> c2_Conv: c2's INT8 input cast uses c1's threshold *as chosen by the search* (§4.2:
    ``table[L] = best.th`` persists for later layers), not the one of the input table."""
    g = chain.g
    names = [op.name for op in g.ops]
    assert names[:3] == ["x", "c1_Conv", "c2_Conv"]
    prod, cons = 1, 2
    t_prod = g.ops[prod].outputs[0]
    # a deliberately bad input-table threshold for the producer (heavy clipping): no method picks it
    bad = 0.05 * chain.cal.tuned["max"][t_prod]
    base = update_threshold(chain.base, t_prod, bad)
    res = chain.run(tmp_path, "naive", base=base, tag="normal")
    best_prod = res.ops[prod].best_threshold
    assert best_prod != pytest.approx(bad, rel=1e-3)

    plan = plan_from_table(g, base)
    problem = SearchProblem(chain.model, plan, thresholds_from_table(g, base), chain.inputs)
    idx = plan.tensor_index
    th = thresholds_from_table(g, base)
    th[idx["x"]] = res.ops[0].best_threshold
    cons_ths = [c.threshold for c in res.ops[cons].candidates]
    t_cons = g.ops[cons].outputs[0]

    def configs(table):
        return [Config(frozenset({g.ops[cons].name}), problem.with_output(table, t_cons, c)) for c in cons_ths]

    with_original = WholeGraph().losses(problem, configs(th))
    th_seq = th.copy()
    th_seq[idx[t_prod]] = best_prod
    with_best = WholeGraph().losses(problem, configs(th_seq))
    np.testing.assert_allclose(losses(res.ops[cons]), with_best, rtol=0, atol=1e-9)
    assert max(abs(a - b) for a, b in zip(with_best, with_original)) > 1e-4
    # fast strategy, same explicit tables
    ev = FloatPrefix()
    carry = ev.init(problem, start=cons)  # the prefix is a value: built up to the consumer, passed in
    assert carry.next == cons
    np.testing.assert_allclose(ev.losses(problem, configs(th_seq), carry), with_best, rtol=0, atol=TIE)

    # second search: the producer's candidates all equal the bad threshold -> the consumer's losses change
    forced = {m: dict(v) for m, v in chain.cal.tuned.items()}
    for m in forced:
        forced[m][t_prod] = bad
    res2 = chain.run(tmp_path, "naive", base=base, method_thresholds=forced, tag="forced")
    assert res2.ops[prod].best_threshold == pytest.approx(bad)
    assert losses(res2.ops[0]) == losses(res.ops[0])
    assert [c.threshold for c in res2.ops[cons].candidates] == cons_ths
    assert max(abs(a - b) for a, b in zip(losses(res2.ops[cons]), losses(res.ops[cons]))) > 1e-4
    np.testing.assert_allclose(losses(res2.ops[cons]), with_original, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------ CLI fixtures
POST_PROCESS = '''\
import json, os, time


def PostProcess(outputs):
    """Identity; with QSENS_TEST_GATE set, block once the checkpoint records >= 1 finished op."""
    gate = os.environ.get("QSENS_TEST_GATE")
    if gate:
        try:
            with open(gate) as f:
                n = len(json.load(f)["ops"])
        except (OSError, ValueError):
            n = 0
        if n >= 1:
            with open(gate + ".ready", "w") as f:
                f.write(str(n))
            time.sleep(600)
    return outputs
'''


@pytest.fixture(scope="module")
def clidata(tmp_path_factory):
    """A 14-op model, 10 .npy samples and an identity post-process file."""
    d = tmp_path_factory.mktemp("cli")
    model = sm.save(sm.resnet_ish(blocks=3, hw=12, seed=5), d / "net.onnx")
    data = sm.npy_dataset(d / "data", n=10, shape=(1, 3, 12, 12), seed=1)
    post = d / "post.py"
    post.write_text(POST_PROCESS)
    return {"dir": d, "model": model, "data": data, "post": str(post)}


def search_argv(cd, out_dir, *extra, expected_cos="1.0"):
    return ["search", cd["model"], "--dataset", cd["data"], "--input_num", "8", "--inference_num", "4",
            "--tune_num", "1", "--expected_cos", expected_cos, "--out_dir", str(out_dir), "-q", *extra]


OUTPUTS = ("qtable", "new_cali_table.txt")


def cali_files(d):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(str(d), "cali_table*")))


@pytest.fixture(scope="module")
def full_run(clidata, tmp_path_factory):
    """One uninterrupted in-process `qsens search` (SOURCE_DATE_EPOCH set) with the post-process file."""
    out = tmp_path_factory.mktemp("full") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        mp.delenv("QSENS_TEST_GATE", raising=False)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli.main(search_argv(clidata, out, "--post_process", clidata["post"]))
    assert rc == 0
    return {"out": out, "stdout": buf.getvalue()}


# ------------------------------------------------------------------------------------------------ 3. resume
def test_resume_after_sigkill(clidata, full_run, tmp_path, capsys):
    out = tmp_path / "out"
    gate = out / CKPT
    kill_at_gate(search_argv(clidata, out, "--post_process", clidata["post"]), gate, tmp_path,
                 "a checkpoint with a finished op")
    ck = json.loads(gate.read_text())
    k = len(ck["ops"])
    total = len(json.loads((full_run["out"] / "search.json").read_text())["ops"])
    assert total == 14 and 1 <= k < total
    for name in OUTPUTS + ("search.json",):  # nothing looks complete
        assert not (out / name).exists(), name

    rc, stdout, _ = run_cli(search_argv(clidata, out, "--post_process", clidata["post"], "--resume"), capsys)
    assert rc == 0
    assert f"resuming: {k} of {total} ops already evaluated in {out / CKPT}" in stdout
    # the finished calibration phase is reused, not redone (its tables below are still byte-identical)
    assert f"resuming: calibration reused from {out / 'calibration.ckpt.json'}" in stdout
    assert not (out / "calibration.ckpt.json").exists()
    m = re.search(r"(\d+) ops evaluated", stdout)
    assert m and int(m.group(1)) == total - k
    assert re.search(r"(\d+) ops evaluated", full_run["stdout"]).group(1) == str(total)
    assert not (out / CKPT).exists()
    for name in OUTPUTS + tuple(cali_files(full_run["out"])):
        assert (out / name).read_bytes() == (full_run["out"] / name).read_bytes(), name
    a = json.loads((out / "search.json").read_text())
    b = json.loads((full_run["out"] / "search.json").read_text())
    assert [o["candidates"] for o in a["ops"]] == [o["candidates"] for o in b["ops"]]
    assert a["float_layers"] == b["float_layers"]


def test_resume_api_evaluates_only_remaining_ops(rn, tmp_path, monkeypatch):
    """API: a search interrupted after k ops resumes with SearchResult.evaluated_ops == n - k, same outputs."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    n = len(rn.g.ops)
    k = 4
    state = {"stop_at": 0}
    cut = tmp_path / "cut"

    def post(outputs):  # identity; raises once the checkpoint in `cut` records `stop_at` finished ops
        if state["stop_at"] and (cut / CKPT).exists():
            if len(json.loads((cut / CKPT).read_text())["ops"]) >= state["stop_at"]:
                raise KeyboardInterrupt
        return outputs

    cfg = SearchConfig(methods=rn.methods, expected_cos=1.0)

    def go(out, **kw):
        return search(rn.model, rn.base, rn.cal.tuned, rn.inputs, cfg, out_dir=str(out), progress=False,
                      post_process=post, **kw)

    full = go(tmp_path / "full", echo=lambda s: None)
    assert full.evaluated_ops == n
    state["stop_at"] = k
    with pytest.raises(KeyboardInterrupt):
        go(cut, echo=lambda s: None)
    assert len(json.loads((cut / CKPT).read_text())["ops"]) == k
    for name in OUTPUTS + ("search.json",):
        assert not (cut / name).exists(), name
    state["stop_at"] = 0
    msgs = []
    res = go(cut, resume=True, echo=msgs.append)
    assert res.evaluated_ops == n - k
    assert msgs == [f"resuming: {k} of {n} ops already evaluated in {cut / CKPT}"]
    assert [losses(o) for o in res.ops] == [losses(o) for o in full.ops]
    assert res.float_layers == full.float_layers
    for name in OUTPUTS:
        assert (cut / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    assert not (cut / CKPT).exists()
    # a checkpoint of another search is refused, not silently mixed in
    (cut / CKPT).write_text(json.dumps({"key": "0" * 16, "ops": [], "th": []}))
    from qsens.errors import SearchError

    with pytest.raises(SearchError, match="different search"):
        go(cut, resume=True, echo=lambda s: None)


# ------------------------------------------------------------------------------------------------ 4. reproducible
def test_same_seed_byte_identical_across_processes(clidata, full_run, tmp_path):
    out = tmp_path / "again"
    cmd = [sys.executable, "-m", "qsens"] + search_argv(clidata, out, "--post_process", clidata["post"])
    r = subprocess.run(cmd, cwd=str(tmp_path), env=sub_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    names = cali_files(full_run["out"])
    assert names == ["cali_table", "cali_table_KL.1", "cali_table_KL_tune", "cali_table_MAX.1",  # run_sensitive_layer's
                     "cali_table_MAX_tune", "cali_table_Percentile9999.1", "cali_table_Percentile9999_tune"]
    assert cali_files(out) == names
    for name in OUTPUTS + tuple(names):
        assert (out / name).read_bytes() == (full_run["out"] / name).read_bytes(), name
    assert "# genetated time: 2023-11-14 22:13:20" in (out / "qtable").read_text()


def test_other_seed_runs(clidata, tmp_path, capsys):
    out = tmp_path / "seed7"
    rc, stdout, _ = run_cli(search_argv(clidata, out, "--seed", "7", "--input_num", "5"), capsys)
    assert rc == 0 and "success sensitive layer search" in stdout
    # each phase's wall time and cores used (process CPU time over wall time) in search.json and the summary line
    t = json.loads((out / "search.json").read_text())["timings"]
    assert t["calibration_s"] > 0 and 0 < t["calibration_cores"] < 64 and 0 < t["search_cores"] < 64
    assert re.search(r"calibration [\d.]+ s on [\d.]+ cores, search [\d.]+ s on [\d.]+ cores", stdout), stdout
    q = ref.cpp_qtable(out / "qtable")
    assert 1 <= len(q) and set(q.values()) == {"F32"}
    _, th = ref.python_parse(out / "new_cali_table.txt")
    assert len(th) == 14


# ------------------------------------------------------------------------------------------------ 5. outputs
def test_outputs_parse_with_independent_parser(full_run):
    out = full_run["out"]
    sj = json.loads((out / "search.json").read_text())
    ops = sj["ops"]
    methods = ["MAX", "Percentile9999", "KL"]
    # one candidate row per (op, method), in TPU-MLIR's method order
    assert len(ops) == 14
    assert all([c["method"] for c in o["candidates"]] == methods for o in ops)
    assert sj["n_candidates"] == 14 * 3
    assert all(c["op"] == o["op"] for o in ops for c in o["candidates"])
    # qtable
    q = ref.cpp_qtable(out / "qtable")
    assert list(q) == sj["float_layers"] and set(q.values()) == {"F32"}
    assert 5 <= len(q)  # max_float_layers 5 (+ Conv/Scale partners)
    text = (out / "qtable").read_text().splitlines()
    assert text[0] == "# genetated time: 2023-11-14 22:13:20"
    assert "# sample number: 4" in text and "# chip: bm1684  mix_mode: F32" in text
    assert f"# number of F32 layer: {len(q)}" in text
    # input table (qsens calibrated: cali_table = KL, tuned) vs new_cali_table.txt
    _, base = ref.python_parse(out / "cali_table")
    _, new = ref.python_parse(out / "new_cali_table.txt")
    assert list(new) == list(base)
    assert all(new[t][1:] == base[t][1:] for t in base)
    assert ref.cpp_import(out / "new_cali_table.txt")["int8"] == {k: tuple(v) for k, v in new.items()}
    # TPU-MLIR names an op after its (only) output tensor: one table line per searched op, in op order
    assert list(new) == [o["op"] for o in ops]
    for o in ops:
        assert new[o["op"]][0] == float(f"{o['best_threshold']:.7f}"), o["op"]
    for name in cali_files(out):
        h, tab = ref.python_parse(out / name)
        # TPU-MLIR 1.23: run_calibration's header for the base table, run_sensitive_layer's for the method tables
        assert list(tab) == list(base) and h[0].startswith("# mlir version: " if name == "cali_table" else "# genetated time: ")
        assert ref.cpp_import(out / name)["int8"] == {k: tuple(v) for k, v in tab.items()}


def test_new_cali_table_thresholds_are_best_thresholds(rn, tmp_path):
    """API: op -> output tensor via the graph; every tensor's new threshold is its op's best_threshold."""
    res = rn.run(tmp_path, "fast")
    _, base = ref.python_parse(_dump(rn.base, tmp_path / "in_table"))
    _, new = ref.python_parse(res.files["new_cali_table"])
    assert list(new) == list(base) == list(rn.g.tensors)
    for o in res.ops:
        t = rn.g.op(o.op).outputs[0]
        assert new[t][0] == float(f"{o.best_threshold:.7f}")
        assert new[t][1:] == base[t][1:]
        assert res.new_thresholds[t] == o.best_threshold
        assert o.best_threshold in [c.threshold for c in o.candidates]
    assert any(new[t][0] != base[t][0] for t in new), "some op should pick a non-KL threshold"


def _dump(table, path):
    write_cali_table(str(path), table, method="kl", mlir="m", histogram_bins=2048, sample_number=8)
    return str(path)


def test_log_lines(full_run):
    out = full_run["out"]
    lines = (out / LOG_NAME).read_text().splitlines()
    assert lines and all(ln.startswith("INFO:root:") for ln in lines)
    body = "\n".join(lines)
    adj = re.findall(r"^INFO:root:adjust layer (\S+) th, with method (\S+), and threshlod (\S+)$", body, re.M)
    los = re.findall(r"^INFO:root:outputs_cos_los = (\S+)$", body, re.M)
    best = re.findall(r"^INFO:root:layer (\S+), layer type is top\.\w+, best_th = (\S+), best_method = (\S+), "
                      r"best_cos_loss = (\S+)$", body, re.M)
    assert len(adj) == len(los) == 14 * 3 and len(best) == 14
    assert re.search(r"^INFO:root:the layer \S+ is 0 sensitive layer, loss is \S+, type is top\.\w+$", body, re.M)
    assert len(re.findall(r"^INFO:root:start to handle layer: \S+, type: top\.\w+$", body, re.M)) == 14
    assert re.search(r"^INFO:root:all_int8_cos=", body, re.M)
    assert re.search(r"^INFO:root:int8 outputs_cos:\d\.\d{6} old$", body, re.M)
    assert re.search(r"^INFO:root:mix model outputs_cos:\d\.\d{6}$", body, re.M)
    sj = json.loads((out / "search.json").read_text())
    for o, (name, th, m, loss) in zip(sj["ops"], best):
        assert (name, m) == (o["op"], o["best_method"])
        assert float(th) == o["best_threshold"] and float(loss) == o["best_loss"]
    for (name, m, th), loss, c in zip(adj, los, [c for o in sj["ops"] for c in o["candidates"]]):
        assert (name, m) == (c["op"], c["method"]) and float(th) == c["threshold"] and float(loss) == c["loss"]
    ranks = re.findall(r"^INFO:root:the layer (\S+) is (\d+) sensitive layer", body, re.M)
    assert [int(r) for _, r in ranks][:1] == [0] and len(ranks) == 14


def test_given_calibration_table_headers_copied(clidata, tmp_path, capsys):
    """--calibration_table: new_cali_table.txt = that file's headers verbatim + same names/min/max."""
    tab = tmp_path / "my_table"
    rc, _, _ = run_cli(["calibrate", clidata["model"], "--dataset", clidata["data"], "--input_num", "8",
                        "--tune_num", "1", "-o", str(tab), "-q"], capsys)
    assert rc == 0
    out = tmp_path / "out"
    rc, stdout, _ = run_cli(search_argv(clidata, out, "--calibration_table", str(tab)), capsys)
    assert rc == 0
    h0, t0 = ref.python_parse(tab)
    h1, t1 = ref.python_parse(out / "new_cali_table.txt")
    assert h1 == h0 and list(t1) == list(t0)
    assert all(t1[k][1:] == t0[k][1:] for k in t0)
    # no base table of its own; run_sensitive_layer's per-method tables, as TPU-MLIR writes them next to the table
    assert cali_files(out) == ["cali_table_KL.1", "cali_table_KL_tune", "cali_table_MAX.1", "cali_table_MAX_tune",
                               "cali_table_Percentile9999.1", "cali_table_Percentile9999_tune"]


def test_new_cali_table_headers_when_qsens_calibrates(full_run):
    h_base, _ = ref.python_parse(full_run["out"] / "cali_table")
    h_new, _ = ref.python_parse(full_run["out"] / "new_cali_table.txt")
    assert h_new == h_base


def test_plot_is_drawn_beside_the_summary_and_a_failing_plot_loses_nothing(rn, tmp_path, monkeypatch):
    """The plot runs on a thread while the summary's second mix runs: its title has the new table's similarity, the
    file is recorded before search.json; a plot that raises is a one-line warning and every other file is written."""
    from qsens.search import job as J

    seen = {}
    real = J.plot_losses

    def spy(result, path, methods):
        seen["title"] = (result.summary["int8"]["similarity"], result.summary["mix_new_table"]["similarity"])
        return real(result, path, methods)

    monkeypatch.setattr(J, "plot_losses", spy)
    res = rn.run(tmp_path, tag="plotted")
    assert seen["title"] == (res.int8_similarity, res.summary["mix_new_table"]["similarity"])
    assert os.path.getsize(res.files["plot"]) > 1000
    assert list(json.load(open(res.files["search_json"]))["files"])[-2:] == ["plot", "search_json"]

    def broken(result, path, methods):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(J, "plot_losses", broken)
    said = []
    cfg = J.SearchConfig(methods=rn.methods, expected_cos=1.0)
    res = J.search(rn.model, rn.base, rn.cal.tuned, rn.inputs, cfg, out_dir=str(tmp_path / "broken"), progress=False,
                   echo=said.append)
    assert said == ["warning: plot not written (RuntimeError: no fonts)"]
    assert "plot" not in res.files and os.path.exists(res.files["qtable"]) and os.path.exists(res.files["search_json"])


def test_absolute_qtable_path(clidata, tmp_path, capsys):
    """-o with an absolute path writes the qtable there (TPU-MLIR -o), the other files into --out_dir."""
    out = tmp_path / "out"
    q = tmp_path / "elsewhere_qtable"
    rc, stdout, _ = run_cli(search_argv(clidata, out, "-o", str(q)), capsys)
    assert rc == 0 and f"Output mix quantization table to {q}" in stdout
    assert q.exists() and not (out / "qtable").exists() and (out / "new_cali_table.txt").exists()
    assert list(ref.cpp_qtable(q)) == json.loads((out / "search.json").read_text())["float_layers"]


# ------------------------------------------------------------------------------------------------ 6. early exit
def test_early_exit_writes_nothing(clidata, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(search_argv(clidata, out, expected_cos="0.0"), capsys)
    assert rc == 0
    m = re.search(r"job success, current int8 cos:(\S+) is higher than expected_cos:0\.0,no need for mix precsion",
                  stdout)
    assert m and 0.9 < float(m.group(1)) <= 1.0
    assert "success sensitive layer search" not in stdout
    assert not out.exists() or os.listdir(out) == []


# ------------------------------------------------------------------------------------------------ 7. CLI errors
def assert_one_line_error(rc, err, *needles):
    assert rc == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("qsens: error: ")]
    assert len(errs) == 1, err
    for n in needles:
        assert n in errs[0], (n, errs[0])
    return errs[0]


def assert_nothing_complete(out):
    for name in OUTPUTS + ("search.json", LOG_NAME):
        assert not (Path(out) / name).exists(), name


def test_error_post_process_missing(clidata, tmp_path, capsys):
    out = tmp_path / "out"
    missing = str(tmp_path / "nope.py")
    rc, _, err = run_cli(search_argv(clidata, out, "--post_process", missing), capsys)
    assert_one_line_error(rc, err, "--post_process", missing)
    assert_nothing_complete(out)


def test_error_post_process_without_function(clidata, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "pp.py"
    bad.write_text("def postprocess(outputs):\n    return outputs\n")
    rc, _, err = run_cli(search_argv(clidata, out, "--post_process", str(bad)), capsys)
    assert_one_line_error(rc, err, "--post_process", str(bad), "PostProcess")
    broken = tmp_path / "broken.py"
    broken.write_text("def PostProcess(outputs:\n")
    rc, _, err = run_cli(search_argv(clidata, out, "--post_process", str(broken)), capsys)
    assert_one_line_error(rc, err, str(broken), "SyntaxError")
    assert_nothing_complete(out)


def test_error_calibration_table_mismatch(clidata, chain, tmp_path, capsys):
    out = tmp_path / "out"
    other = _dump(chain.base, tmp_path / "chain_table")  # a table of another model
    rc, _, err = run_cli(search_argv(clidata, out, "--calibration_table", other), capsys)
    line = assert_one_line_error(rc, err, other, "does not match the model", "missing from the table",
                                 "not in the model")
    assert "r0_Relu" in line and "c1_Conv" in line  # names listed: one of the model, one of the table
    rc, _, err = run_cli(search_argv(clidata, out, "--calibration_table", str(tmp_path / "none")), capsys)
    assert_one_line_error(rc, err, str(tmp_path / "none"), "not found")
    assert_nothing_complete(out)


def test_error_inference_num_too_large(clidata, tmp_path, capsys):
    out = tmp_path / "out"
    argv = search_argv(clidata, out)
    argv[argv.index("--inference_num") + 1] = "11"
    rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, "--inference_num 11", "10 samples", clidata["data"])
    assert_nothing_complete(out)


def test_error_out_dir_unwritable(clidata, tmp_path, capsys):
    f = tmp_path / "regular_file"
    f.write_text("x")
    out = f / "out"
    rc, _, err = run_cli(search_argv(clidata, out), capsys)
    assert_one_line_error(rc, err, "--out_dir", str(out))
    assert f.read_text() == "x"


def test_error_bad_flags(clidata, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run_cli(search_argv(clidata, out, "--methods", "max,foo"), capsys)
    assert_one_line_error(rc, err, "'foo'")
    rc, _, err = run_cli(search_argv(clidata, out, "--global_compare_layers", "nope_tensor"), capsys)
    assert_one_line_error(rc, err, "--global_compare_layers", "nope_tensor")
    rc, _, err = run_cli(search_argv(clidata, out, "--global_compare_layers", "y_Gemm:0.5,r0_Relu:0.4"), capsys)
    assert_one_line_error(rc, err, "--global_compare_layers", "sum to 1")
    assert_nothing_complete(out)


def test_error_in_subprocess_is_one_line(clidata, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "qsens"] + search_argv(clidata, out, "--post_process", str(tmp_path / "x.py"))
    r = subprocess.run(cmd, cwd=str(tmp_path), env=sub_env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(r.returncode, r.stderr, "--post_process")
    assert r.stderr.strip().splitlines()[-1].startswith("qsens: error: ")
    assert_nothing_complete(out)


def test_qtable_into_missing_directory_creates_it(clidata, tmp_path, capsys):
    """-o into a directory that does not exist yet: qsens creates it up front (before any work) and writes there."""
    out = tmp_path / "out"
    rc, _, err = run_cli(search_argv(clidata, out, "-o", "no_such_dir/qtable"), capsys)
    assert rc == 0, err
    q = out / "no_such_dir" / "qtable"
    assert q.is_file() and q.read_text().startswith("# genetated time:")


def test_error_qtable_dir_unwritable(clidata, tmp_path, capsys):
    out = tmp_path / "out"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run_cli(search_argv(clidata, out, "-o", str(blocker / "qtable")), capsys)
    assert_one_line_error(rc, err, str(blocker))
    assert_nothing_complete(out)


# ------------------------------------------------------------------------------------------------ 8. analysis
TV_AN = [Sensitivity("conv1", 0.01, "Conv"), Sensitivity("add1", 0.005, "Add"), Sensitivity("conv2", 0.004, "Conv"),
         Sensitivity("scale1", 0.002, "Scale"), Sensitivity("relu1", 0.001, "Relu")]


def _succ(n):
    return ["scale1"] if n == "conv1" else []


def _pred(n):
    return ["conv1"] if n == "scale1" else []


@pytest.mark.parametrize("k, want", [
    (0, []),
    (1, ["conv1", "scale1"]),
    (2, ["conv1", "scale1"]),
    (3, ["conv1", "scale1", "add1"]),
    (4, ["conv1", "scale1", "add1", "conv2"]),
    (5, ["conv1", "scale1", "add1", "conv2", "relu1"]),
])
def test_analysis_tv_an(k, want):
    got, _ = analysis_sensitive_layers(list(reversed(TV_AN)), k, successors=_succ, predecessors=_pred)
    assert got == want


def test_analysis_tv_an_ranks_and_lines():
    _, lines = analysis_sensitive_layers(TV_AN, 5, successors=_succ, predecessors=_pred)
    assert lines == [
        "the layer conv1 is 0 sensitive layer, loss is 0.01, type is top.Conv",
        "the layer add1 is 1 sensitive layer, loss is 0.005, type is top.Add",
        "the layer conv2 is 2 sensitive layer, loss is 0.004, type is top.Conv",
        "the layer scale1 is 3 sensitive layer, loss is 0.002, type is top.Scale",
        "the layer relu1 is 3 sensitive layer, loss is 0.001, type is top.Relu",
    ]
    _, lines0 = analysis_sensitive_layers(TV_AN, 0, successors=_succ, predecessors=_pred)
    assert [ln.split()[4] for ln in lines0] == ["0", "1", "2", "3", "4"]


def test_analysis_scale_pulls_its_conv():
    sens = [Sensitivity("scale1", 0.05, "Scale"), Sensitivity("conv1", 0.001, "Conv"), Sensitivity("a", 0.01, "Add")]
    got, _ = analysis_sensitive_layers(sens, 2, successors=_succ, predecessors=_pred)
    assert got == ["scale1", "conv1"]
    got3, _ = analysis_sensitive_layers(sens, 3, successors=_succ, predecessors=_pred)
    assert got3 == ["scale1", "conv1", "a"]


def test_analysis_with_graph_successors(rn):
    g = rn.g
    sens = [Sensitivity(op.name, 0.001 * (i + 1), op.type) for i, op in enumerate(g.ops)]
    got, lines = analysis_sensitive_layers(sens, 3, g)
    assert got == [op.name for op in g.ops][::-1][:3]
    assert len(lines) == len(g.ops)


def test_best_method_tv_sel():
    assert best_method([0.014830573787862011, 0.011843443367980822, 0.008808857469573828]) == 2
    assert best_method([0.01, 0.01, 0.02]) == 0
    assert best_method([0.02, 0.01, 0.01]) == 1
    assert best_method([0.3, 0.2, 0.2, 0.1]) == 3
    assert best_method([float("nan"), 0.2, 0.1]) == 2
    r = choose("input3.1", "Conv", ["MAX", "Percentile9999", "KL"], [5.5119305, 4.1202815, 2.6186381997094728],
               [0.014830573787862011, 0.011843443367980822, 0.008808857469573828], [None, None, None], 0.0)
    assert (r.best_method, r.best_threshold, r.best_loss) == ("KL", 2.6186381997094728, 0.008808857469573828)
    r = choose("L", "Conv", ["MAX", "Percentile9999", "KL"], [1.0, 2.0, 3.0], [0.01, 0.01, 0.02],
               [None, None, None], 0.0)
    assert (r.best_method, r.best_threshold) == ("MAX", 1.0)
    assert [c.method for c in r.candidates] == ["MAX", "Percentile9999", "KL"]


def test_distinct():
    assert distinct([3.0, 1.0, 3.0, 2.0, 1.0]) == ([3.0, 1.0, 2.0], [0, 1, 0, 2, 1])
    assert distinct([]) == ([], [])


def test_sl_names_and_config_validation():
    assert [SL_NAMES[m] for m in ("max", "percentile9999", "kl", "mse")] == ["MAX", "Percentile9999", "KL", "MSE"]
    assert SearchConfig(methods=("use_max", "Percentile", "KL")).methods == ("max", "percentile9999", "kl")
    from qsens.errors import SearchError

    with pytest.raises(SearchError, match="strategy"):
        SearchConfig(strategy="greedy")
    with pytest.raises(SearchError, match="method batch"):
        SearchConfig(method_batch="vmap")
    from qsens.errors import QsensError

    with pytest.raises(QsensError, match="--chip cv183x: unsupported chip; use one of bm1684, bm1684x"):
        SearchConfig(chip="cv183x")
    assert SearchConfig(chip="bm1684x").chip == "bm1684x"  # BM1684X is simulated too (docs/bm1684x.md)


def test_search_api_missing_method_thresholds(rn, tmp_path):
    from qsens.errors import SearchError

    cfg = SearchConfig(methods=("max", "kl"), expected_cos=1.0)
    with pytest.raises(SearchError, match="'kl'"):
        search(rn.model, rn.base, {"max": rn.cal.tuned["max"]}, rn.inputs, cfg, out_dir=str(tmp_path / "o"),
               progress=False, echo=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_api_early_exit_returns_without_files(rn, tmp_path):
    msgs = []
    cfg = SearchConfig(methods=rn.methods, expected_cos=0.0)
    res = search(rn.model, rn.base, rn.cal.tuned, rn.inputs, cfg, out_dir=str(tmp_path / "o"), progress=False,
                 echo=msgs.append, extra_files=lambda: pytest.fail("extra_files called on early exit"))
    assert res.early_exit and res.ops == [] and res.evaluated_ops == 0
    assert len(msgs) == 1 and msgs[0].startswith(f"job success, current int8 cos:{res.int8_similarity} is higher")
    assert not (tmp_path / "o").exists()
    assert 0.0 < res.int8_similarity <= 1.0 and res.int8_similarity == pytest.approx(0.5 + 0.5 * res.int8_cosine)


def test_read_back_table_matches(rn, tmp_path):
    """The base table written and read back gives the same plan/thresholds (sanity for the CLI path)."""
    p = _dump(rn.base, tmp_path / "t")
    t = read_cali_table(p)
    np.testing.assert_allclose(thresholds_from_table(rn.g, t), thresholds_from_table(rn.g, rn.base), rtol=1e-6)
