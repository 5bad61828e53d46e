"""Pure helpers of experiments/accuracy_sweep.py and experiments/ranking_stability.py (no experiment runs)."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import accuracy_sweep as sw  # noqa: E402
from experiments import ranking_stability as rs  # noqa: E402

OPS = ["a", "b", "c", "d", "e", "f"]


# ------------------------------------------------------------------------------------------------ accuracy_sweep
def test_random_orders_are_seeded_permutations():
    r = sw.random_orders(OPS, 3, 1684, 4)
    assert r == {"random_0": ["f", "a", "d", "c"], "random_1": ["e", "b", "f", "c"], "random_2": ["d", "c", "b", "e"]}
    assert all(type(o) is str for o in r["random_0"])
    assert sw.random_orders(OPS, 3, 1684, 4) == r  # same seed, same orders
    full = sw.random_orders(OPS, 1, 7, 10)["random_0"]
    assert sorted(full) == OPS  # k beyond the op count: the whole permutation


def test_graph_order_baselines():
    assert sw.first_n(OPS, 3) == ["a", "b", "c"]
    assert sw.last_n(OPS, 3) == ["f", "e", "d"]
    assert sw.first_n(OPS, 0) == [] and sw.last_n(OPS, 0) == []


def test_variant_orders_skip_sensitive_and_pick_tables():
    cv = {"tools": {"sensitive": {"order": ["x"]}, "sensitive (base table)": {"order": ["x"]},
                    "auto_n": {"order": ["a", "b", "c"]}, "auto_n (sensitive table)": {"order": ["c", "a"]},
                    "run_qtable": {"qtable": ["a"]}}}
    assert sw.variant_orders(cv, 2) == {"auto_n": {"order": ["a", "b"], "table": "original"},
                                        "auto_n (sensitive table)": {"order": ["c", "a"], "table": "new"}}


def test_build_orders_names_kinds_and_tables():
    cfg = {"max_k": 2, "baseline_table": "original", "n_random": 2, "seed": 1684}
    o = sw.build_orders(["c", "a", "e"], OPS, cfg, None)
    assert list(o) == ["sensitive (new table)", "sensitive (original table)", "random_0", "random_1", "first_n",
                       "last_n"]
    assert o["sensitive (new table)"] == {"kind": "sensitive", "table": "new", "order": ["c", "a"]}
    assert o["sensitive (original table)"]["table"] == "original"
    assert o["random_0"] == {"kind": "baseline", "table": "original", "order": ["f", "a"]}
    assert o["last_n"]["order"] == ["f", "e"]
    o2 = sw.build_orders(["c"], OPS, cfg, {"tools": {"neighbour": {"order": ["b", "d", "f"]}}})
    assert o2["neighbour"] == {"kind": "variant", "table": "original", "order": ["b", "d"]}


def test_first_k_above():
    curve = [0.9, 0.99, 0.995, 0.9991]
    assert sw.first_k_above(curve, 0.99) == 2  # strictly above
    assert sw.first_k_above(curve, 0.98) == 1
    assert sw.first_k_above(curve, 0.999) == 3
    assert sw.first_k_above(curve, 0.9999) is None


def test_random_mean_row():
    res = {"orders": {"random_0": {"held_out": {"similarity": [0.9, 0.92]}, "labelled": {"top1": [0.5, 0.7]}},
                      "random_1": {"held_out": {"similarity": [0.9, 0.96]}, "labelled": {"top1": [0.5, 0.5]}},
                      "first_n": {"held_out": {"similarity": [0.9, 0.99]}, "labelled": {"top1": [0.5, 0.9]}}}}
    m = sw.random_mean(res)
    assert m["held_out"]["similarity"] == pytest.approx([0.9, 0.94])
    assert m["labelled"]["top1"] == pytest.approx([0.5, 0.6])


# ------------------------------------------------------------------------------------------------ ranking_stability
def test_overlap_and_jaccard():
    assert rs.overlap(["a", "b", "c"], ["b", "c", "d", "e"]) == {"overlap": 2, "jaccard": 0.4}
    assert rs.overlap(["a"], ["a"]) == {"overlap": 1, "jaccard": 1.0}
    assert rs.overlap([], []) == {"overlap": 0, "jaccard": 1.0}
    assert rs.overlap(["a"], ["b"]) == {"overlap": 0, "jaccard": 0.0}


def test_bootstrap_matches_qsens_bootstrap_ci():
    from qsens.metrics import bootstrap_ci

    v = np.array([0, 1, 0, 1, 1, 1, 0, 1, 1, 1.0])
    means = rs.bootstrap_means(v, 200, 3)
    assert means.shape == (1, 200)
    lo, hi = rs.percentile_ci(means)[0]
    assert (float(v.mean()), lo, hi) == bootstrap_ci(v, n_boot=200, seed=3) == (0.7, 0.3, 0.9)
    # paired: every row resampled with the same indices; a constant row has a zero-width interval
    m2 = rs.bootstrap_means(np.stack([v, 2 * v, np.full(10, 0.25)]), 200, 3)
    assert np.allclose(m2[1], 2 * m2[0]) and np.all(m2[2] == 0.25)
    assert rs.percentile_ci(m2)[2].tolist() == [0.25, 0.25]


def test_chosen_top_n_rule():
    types = {o: "Conv" for o in OPS}
    losses = [0.1, 0.5, 0.3, 0.5, 0.0, 0.2]
    assert rs.chosen(OPS, types, losses, 1) == ["b"]  # a tie goes to the earlier op
    assert rs.chosen(OPS, types, losses, 3) == ["b", "d", "c"]


def test_pairwise_tau_and_choice_stats():
    from qsens.search.variants import kendall_tau

    t = rs.tau_stats(rs.pairwise({"x": [1, 2, 3], "y": [1, 2, 3], "z": [3, 2, 1]}, kendall_tau))
    assert t["pairs"] == {"x vs y": 1.0, "x vs z": -1.0, "y vs z": -1.0}
    assert (t["min"], t["max"]) == (-1.0, 1.0) and t["mean"] == pytest.approx(-1 / 3)
    c = rs.choice_stats({"s": ["a", "b"], "A": ["a", "b"], "B": ["a", "c"]})
    assert c["identical_pairs"] == 1 and c["n_pairs"] == 3 and c["distinct"] == 2
    assert c["pairs"]["s vs B"] == {"overlap": 1, "jaccard": pytest.approx(1 / 3)}
    assert c["mean_jaccard"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3) and c["min_jaccard"] == pytest.approx(1 / 3)


def test_image_sets_windows():
    s = rs.image_sets({"subset_start": 100, "n_subsets": 3, "reference": [100, 500]}, 30, [10, 30, 100], 30, 500)
    assert s == {"subsets": {"search": [0, 30], "A": [100, 130], "B": [130, 160], "C": [160, 190]},
                 "prefixes": {"10": [0, 10], "30": [0, 30], "100": [0, 100]}, "reference": [100, 500]}
    s = rs.image_sets({"subset_start": 30, "n_subsets": 2, "reference": None}, 30, [10, 30, 100], 30, 100)
    assert s["subsets"] == {"search": [0, 30], "A": [30, 60], "B": [60, 90]} and s["reference"] is None
    with pytest.raises(SystemExit):
        rs.image_sets({"subset_start": 30, "n_subsets": 3, "reference": None}, 30, [10], 30, 100)
