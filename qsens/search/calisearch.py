"""TPU-MLIR 1.30.2's ``run_calibration.py --search search_qtable | search_threshold`` on the search engine.

Specification: ``docs/search_qtable.md`` (every rule with its file:line in TPU-MLIR 1.30.2); fixtures
``tests/fixtures/tpu_mlir/*/search_qtable*`` and ``*/search_threshold*``.  Both start from one statistics pass
with the streaming (v2) histograms and every method's table tuned (``qsens.calibrate.calibrate(hist="v2",
tune_methods=methods)``, equal to 1.30.2's ``gen_multiple_thresholds`` within 2e-6).

- :class:`SearchThreshold`: the all-INT8 model of each method's ``_tune`` table scored on the inference images
  (``cos``, or ``1 - snr``); the best method's table becomes the calibration table.
- :class:`SearchQtable` (a strategy: ``init / update / done`` over JSON state): type screening on the first
  image, then per searched layer the network with every other searched layer in F32 and that layer in INT8
  for each method's threshold (the best one kept in the evolving table), then TPU-MLIR's top-K with the
  Conv/Scale partner rule, evaluated, and ``adjust_qtable`` (auto-N by bisection).

TPU-MLIR's defects are reproduced, each reported beside the faithful value (docs/search_qtable.md §9):
D1, without the auto-N adjustment the qtable lists *every searched layer* while the logged similarity is the
top-K model's; D2, the adjustment returns its last probe, passing or not; D3, ``-o`` is the MSE table, the
searched thresholds are only in ``new_cali_table.txt``.  The type order is the op order (TPU-MLIR iterates a
Python set, whose order changes from process to process).
"""

from __future__ import annotations

import numpy as np

from ..calibrate import round_table
from .evaluators import Config, run_mixed, run_mixed_env
from .mixprec import int8_type_of
from .problem import Problem
from .selectors import Sensitivity, analysis_sensitive_layers

SEARCH_METHODS = ("kl", "max", "percentile9999", "mse")  # search_threshold's order (ties: the first wins)


def snr_loss(ref: dict, outs: dict, n_outputs: int) -> np.ndarray:
    """TPU-MLIR ``_snr_loss`` per image: noise / signal power of the LAST output only (its accumulator is
    overwritten), divided by the number of outputs; float32 sums, ``+1e-7`` in float64."""
    k = list(ref)[-1]
    a = np.asarray(ref[k], np.float32).reshape(len(ref[k]), -1)
    b = np.asarray(outs[list(outs)[-1]], np.float32).reshape(len(a), -1)
    noise = np.power(b - a, 2).sum(axis=-1)
    signal = np.power(a, 2).sum(axis=-1)
    return (noise / (signal.astype(np.float64) + 1e-7)) / n_outputs


def first_image_similarity(problem: Problem, config: Config) -> float:
    """TPU-MLIR ``run_model(..., sample_num=1)``: the similarity of the first inference image only (the
    first chunk is run)."""
    return _first_image_cos_snr(problem, config)[0]


def screen_type(problem: Problem, state: dict, names: list[str], expected_cos: float) -> tuple[list[str], bool]:
    """One step of TPU-MLIR's ``search_layer_type_no_need_quant`` on ``state`` (updated in place): the next type
    of ``state["types"]`` alone in INT8 (its ops among ``names``), scored on the first image.  When every type is
    scored, ``state["sensitive_types"]`` = those below ``max(0.999, expected_cos)``, else the least similar one.
    Returns the log lines and whether the screening is complete."""
    g = problem.graph
    t = state["types"][len(state["type_similarity"])]
    int8 = frozenset(n for n in names if f"top.{g.op(n).type}" == t)
    sim = first_image_similarity(problem, Config(int8, problem.th0))
    state["type_similarity"] = state["type_similarity"] + [[t, sim]]
    ev = ["run int8 mode: {mlir}", f"op_type : {t}, similarity : {sim}"]
    if len(state["type_similarity"]) < len(state["types"]):
        return ev, False
    limit = 1.0 * max(0.999, expected_cos)
    sens = [t for t, s in state["type_similarity"] if s < limit] or \
        [min(state["type_similarity"], key=lambda ts: ts[1])[0]]
    state["sensitive_types"] = sens
    return ev + [f"sensitive_op_type : {sens}, please pay attention to these types of operations"], True


def all_ops(problem: Problem) -> frozenset:
    return frozenset(op.name for op in problem.ops)


def float_ops_of(problem: Problem) -> list[str]:
    """``get_fixed_float_layers``: the Top ops whose output the BM1684 INT8 model stores in F32 (the Input, ops
    kept F32 by the lowering and the reshapes that follow them)."""
    return [op.name for op in problem.ops if int8_type_of(problem, op, set()) == "F32"]


# ----------------------------------------------------------------------------------------------- threshold
class SearchThreshold:
    """``--search search_threshold``: the best of the methods' tuned tables by the all-INT8 model's score."""

    def __init__(self, benchmark_method: str = "cos"):
        if benchmark_method not in ("cos", "snr"):
            raise ValueError(f"benchmark_method must be cos or snr, got {benchmark_method!r}")
        self.benchmark_method = benchmark_method

    def score(self, problem: Problem) -> float:
        """The all-INT8 model of ``problem``'s base table: mean similarity (``cos``) or ``1 - snr`` loss."""
        outs = run_mixed(problem, Config(all_ops(problem), problem.th0))
        if self.benchmark_method == "cos":
            return float(np.mean(problem.scorer.per_sample(outs)))
        return float(1.0 - np.mean(snr_loss(problem.scorer.ref, problem.scorer._post(outs), len(outs))))

    @staticmethod
    def best(scores: dict[str, float]) -> str:
        return max(scores.items(), key=lambda kv: kv[1])[0]  # Python's max: the first of equal scores


# ----------------------------------------------------------------------------------------------- qtable
class SearchQtable:
    """``--search search_qtable`` (default path): JSON state ``{"phase", "types", "layers", ...}``.

    Phases: ``"screen"`` (one op type per update), ``"layers"`` (one searched layer per update, all its methods),
    ``"select"`` (top-K, its evaluation and ``adjust_qtable``'s probes), ``"done"``.
    ``method_thresholds[m][tensor]``: each method's tuned threshold (the trial tables print them ``%.7f``)."""

    name = "search_qtable"

    def __init__(self, methods, method_thresholds, *, expected_cos: float, max_float_layers: int,
                 cluster: bool = False):
        self.methods = list(methods)
        self.method_thresholds = method_thresholds
        self.expected_cos = float(expected_cos)
        self.max_float_layers = int(max_float_layers)
        self.cluster = bool(cluster)  # --cluster: KMeans(2) on [cos loss, snr] instead of top-K + auto-N

    def init(self, problem: Problem, all_int8_cos: float) -> dict:
        g = problem.graph
        float_ops = float_ops_of(problem)
        quant = [op.name for op in g.ops if op.name not in float_ops]
        types = list(dict.fromkeys(f"top.{g.op(n).type}" for n in quant))
        return {"phase": "screen", "all_int8_cos": float(all_int8_cos), "float_ops": float_ops,
                "layer_names_quant": quant, "types": types, "type_similarity": [], "sensitive_types": None,
                "search_layers": None, "next": 0, "th": [float(v) for v in problem.th0], "layers": [],
                "set_fp": None, "cos_k": None, "probes": [], "final_fp": None, "final_cos": None}

    def done(self, problem: Problem, state: dict) -> bool:
        return state["phase"] == "done"

    def update(self, problem: Problem, state: dict, evaluator=None, carry=None):
        state = dict(state)
        ev: list[str] = []
        g = problem.graph
        ph = state["phase"]
        if ph == "screen":
            lines, complete = screen_type(problem, state, state["layer_names_quant"], self.expected_cos)
            ev += lines
            if complete:
                sens = state["sensitive_types"]
                state["search_layers"] = [n for n in state["layer_names_quant"] if f"top.{g.op(n).type}" in sens]
                state["phase"] = "layers" if state["search_layers"] else "done"
                ev += [f"all search layer number: {len(state['search_layers'])}", "Global metrics layer is : None"]
            return state, carry, ev
        if ph == "layers":
            i = state["next"]
            L = state["search_layers"][i]
            op = g.op(L)
            t = op.outputs[0]
            idx = problem.plan.tensor_index[t]
            others = set(state["search_layers"]) - {L}
            int8 = all_ops(problem) - others
            th = np.asarray(state["th"], np.float32)
            ev.append(f"start to handle layer: {L}, type: top.{op.type}")
            trials = []
            configs = []
            for m in self.methods:
                trial = th.copy()
                trial[idx] = round_table(float(self.method_thresholds[m][t]))  # set_layer_new_th (%.7f) -> lowering
                configs.append(Config(int8, trial))
            if self.cluster:  # run_model(..., ['cos', 'snr']): both from the same whole-network run
                losses, snrs = [], []
                for c in configs:
                    outs = run_mixed(problem, c)
                    losses.append(problem.scorer.loss(outs))
                    snrs.append(float(np.mean(snr_loss(problem.scorer.ref, problem.scorer._post(outs), len(outs)))))
            else:
                # every trial from L on, on the mixed prefix before L: before searched layer i every other searched
                # layer is F32 in every trial of every layer, so the Walker's prefix walks on from the previous
                # layer (rebuilt after a resume or when the base no longer agrees); the same losses as whole runs
                from .variants import Walker

                carry = carry or Walker(problem)
                losses = carry.walk(configs[0], {g.index(L): configs})[g.index(L)]
            for j, m in enumerate(self.methods):
                th_j = float(self.method_thresholds[m][t])
                loss = losses[j]
                trials.append({"method": m, "th": th_j, "loss": loss})
                if self.cluster:
                    trials[-1]["snr"] = snrs[j]
                ev += [f"adjust layer {L} th, with method {m}, and threshlod {th_j}", "run int8 mode: {mlir}",
                       f"outputs_cos_los = {loss}"]
            best = trials[0]
            for tr in trials[1:]:
                if tr["loss"] < best["loss"]:
                    best = tr
            th[idx] = round_table(best["th"])
            ev.append(f"layer {L}, layer type is top.{op.type}, best_th = {best['th']}, best_method = "
                      f"{best['method']}, best_cos_loss = {best['loss']}")
            state["th"] = [float(v) for v in th]
            rec = {"name": L, "type": f"top.{op.type}", "trials": trials, "best_th": best["th"],
                   "best_method": best["method"], "best_loss": best["loss"]}
            if self.cluster:  # compare_loss: the element-wise minimum over the methods
                rec["cluster_loss"] = [min(tr["loss"] for tr in trials), min(tr["snr"] for tr in trials)]
            state["layers"] = state["layers"] + [rec]
            state["next"] = i + 1
            if state["next"] >= len(state["search_layers"]):
                state["phase"] = "select"
            return state, carry, ev
        if ph == "select":
            return self._select(problem, state)
        raise ValueError(f"unknown phase {ph!r}")

    # -------------------------------------------------------------------------------------- selection
    def _analysis(self, problem: Problem, state: dict, k: int, log: bool) -> tuple[list[str], list[str]]:
        sens = [Sensitivity(r["name"], r["best_loss"], r["type"].removeprefix("top.")) for r in state["layers"]]
        fp, lines = analysis_sensitive_layers(sens, k, problem.graph)
        return fp, (lines if log else []) + [f"set_fp_layer_list = {fp}"]

    def _eval(self, problem: Problem, state: dict, fp: list[str]) -> float:
        th = np.asarray(state["th"], np.float32)
        outs = run_mixed(problem, Config(all_ops(problem) - set(fp), th))
        return float(np.mean(problem.scorer.per_sample(outs)))

    def _select(self, problem: Problem, state: dict):
        ev: list[str] = []
        K = self.max_float_layers
        if self.cluster:
            sel = kmeans_select([r["name"] for r in state["layers"]], [r["cluster_loss"] for r in state["layers"]])
            cos = self._eval(problem, state, sel)
            ev += [f"selected_layers = {sel}", "run int8 mode: {mlir}",
                   f"float layer number: {K}, mix model outputs_cos: {cos}"]
            state.update(set_fp=sel, cos_k=cos, probes=[], final_fp=sel, final_cos=cos, phase="done")
            return state, None, ev
        fp, lines = self._analysis(problem, state, K, True)
        ev += lines + ["run int8 mode: {mlir}"]
        cos = self._eval(problem, state, fp)
        ev.append(f"float layer number: {K}, mix model outputs_cos: {cos}")
        state["set_fp"], state["cos_k"] = fp, cos
        Q = len(state["layer_names_quant"])
        probes = []
        if cos < self.expected_cos and Q // 5 > K:
            def probe(k):
                f, ls = self._analysis(problem, state, k, False)
                c = self._eval(problem, state, f)
                probes.append({"k": k, "float_layers": f, "cos": c})
                ev.extend(ls + ["run int8 mode: {mlir}", f"float layer number: {k}, mix model outputs_cos: {c}"])
                return f, c

            final, final_cos = probe(Q // 5)
            if final_cos > self.expected_cos:
                lo, hi = K, Q // 5
                while lo <= hi:
                    mid = (lo + hi) // 2
                    final, final_cos = probe(mid)
                    if final_cos > self.expected_cos:
                        hi = mid - 1
                    else:
                        lo = mid + 1
        else:  # TPU-MLIR returns every searched layer here (D1), with the top-K model's similarity
            final, final_cos = [r["name"] for r in state["layers"]], cos
        state["probes"], state["final_fp"], state["final_cos"] = probes, final, final_cos
        state["phase"] = "done"
        return state, None, ev


def kmeans_select(names: list[str], losses: list[list[float]]) -> list[str]:
    """TPU-MLIR's ``cluster(loss_dict, 2)``: ``KMeans(n_clusters=2, random_state=42)`` (scikit-learn, its
    defaults: k-means++, one init, Lloyd) on the unscaled rows ``[cos loss, snr]``; the cluster whose centroid
    has the larger cos loss, in search order."""
    from ..errors import SearchError

    if len(names) < 2:
        raise SearchError(f"--cluster needs at least 2 searched layers, got {len(names)} (TPU-MLIR's KMeans fails too)")
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise SearchError("--cluster needs scikit-learn (pip install scikit-learn), as TPU-MLIR's does") from None
    X = np.asarray(losses, np.float64)
    km = KMeans(n_clusters=2, random_state=42)
    labels = km.fit_predict(X)
    hi = int(np.argmax(km.cluster_centers_[:, 0]))
    return [n for n, lab in zip(names, labels) if lab == hi]


# ----------------------------------------------------------------------------------------------- fast_search
class FastSearch:
    """``--search fast_search`` (``SearchQtableFast.run``, docs/search_qtable.md §5): rounds of per-layer
    losses on the first image (cos and snr), the 5 layers of the highest combined rank go float each round;
    stops when a round gains less than ``eps`` (half the first round's gain) and less than 0.001, when more
    than 20 % of the ops are float, or after ``max_rounds`` (``--inference_num``) rounds.  As in TPU-MLIR,
    ``expected_cos`` is only the early-exit test (D5) and a round that lowered the similarity is kept."""

    name = "fast_search"

    def __init__(self, *, expected_cos: float, max_rounds: int):
        self.expected_cos = float(expected_cos)
        self.max_rounds = int(max_rounds)

    def init(self, problem: Problem, all_int8_cos: float) -> dict:
        g = problem.graph
        float_ops = float_ops_of(problem)
        types = list(dict.fromkeys(f"top.{op.type}" for op in g.ops))
        return {"phase": "screen", "all_int8_cos": float(all_int8_cos), "float_ops": float_ops, "types": types,
                "type_similarity": [], "sensitive_types": None, "layer_names": None, "sensitive": [],
                "round": 0, "cos_sim": float(all_int8_cos), "eps": 0.0, "rounds": [], "final_fp": None,
                "final_cos": None}

    def done(self, problem: Problem, state: dict) -> bool:
        return state["phase"] == "done"

    def update(self, problem: Problem, state: dict, evaluator=None, carry=None):
        state = dict(state)
        g = problem.graph
        ev: list[str] = []
        if state["phase"] == "screen":  # over every op, the Input and the fixed float ops included
            lines, complete = screen_type(problem, state, list(g.op_names), self.expected_cos)
            ev += lines
            if complete:
                sens = state["sensitive_types"]
                state["layer_names"] = [op.name for op in g.ops if f"top.{op.type}" in sens
                                        and op.name not in state["float_ops"]]
                state["phase"] = "rounds"
                ev.append(f"all search layer number: {len(state['layer_names'])}")
            return state, None, ev
        # one round
        state["round"] += 1
        names = list(state["layer_names"])
        sensitive = list(state["sensitive"])
        fp_base = sensitive + [n for n in names if n not in sensitive]
        loss = {}
        for L in names:
            fp = set(fp_base) - {L}
            sim, snr = _first_image_cos_snr(problem, Config(all_ops(problem) - fp, problem.th0))
            loss[L] = [1 - sim, snr]
            ev += [f"start to handle layer: {L}, type: top.{g.op(L).type}", "run int8 mode: {mlir}",
                   f"layer {L}, outputs_cos:{1 - sim}, outputs_snr:{snr}"]
        keys = list(loss)
        r1 = {k: i for i, k in enumerate(sorted(keys, key=lambda k: loss[k][0]))}
        r2 = {k: i for i, k in enumerate(sorted(keys, key=lambda k: loss[k][1]))}
        ordered = sorted(keys, key=lambda k: (r1[k] + r2[k], loss[k][0]))
        top5 = ordered[-5:]
        state["layer_names"] = [n for n in names if n not in top5]
        sensitive += [n for n in top5 if n not in sensitive]
        state["sensitive"] = sensitive
        outs = run_mixed(problem, Config(all_ops(problem) - set(sensitive), problem.th0))
        cos = float(np.mean(problem.scorer.per_sample(outs)))
        ev.append("run int8 mode: {mlir}")
        state["rounds"] = state["rounds"] + [{"round": state["round"], "losses": loss, "added": top5, "cos": cos}]
        stop = (cos - state["cos_sim"] < state["eps"] and cos - state["cos_sim"] < 0.001) or \
            len(sensitive) > 0.2 * len(g.ops)
        if not stop:
            if state["round"] == 1:
                state["eps"] = abs(cos - state["cos_sim"]) / 2
            state["cos_sim"] = cos
            stop = state["round"] >= self.max_rounds
        if stop:
            state.update(phase="done", final_fp=sensitive, final_cos=cos)
        return state, None, ev


def _first_image_cos_snr(problem: Problem, config: Config) -> tuple[float, float]:
    """``run_model(..., sample_num=1, loss_methods=['cos', 'snr'])``."""
    from ..metrics import similarity

    th_eff = problem.plan.effective(np.asarray(config.thresholds, np.float32))
    outs = run_mixed_env(problem, problem.engine.input_env(problem.chunks[0]), th_eff, config.int8_ops)
    outs = problem.scorer._post({k: np.asarray(v)[:1] for k, v in outs.items()})
    ref = {k: v[:1] for k, v in problem.scorer.ref.items()}
    sim = float(np.asarray(similarity(ref, outs, problem.scorer.weights), np.float64)[0])
    return sim, float(snr_loss(ref, outs, len(outs))[0])
