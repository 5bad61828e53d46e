"""Does the searched qtable beat simple choices of float layers?  (issue: "the searched qtable's MIX similarity
beats N randomly chosen float layers (median of 5 seeded draws) and the first-N and last-N ops").

Reads a finished search (``--run DIR``: search.json + new_cali_table.txt, e.g. from ``qsens demo``), rebuilds the
same inference set, and evaluates the mixed model with the same new table and N float layers chosen
(a) by the search, (b) at random (5 seeds, median), (c) the first N compute ops, (d) the last N compute ops.

    python experiments/qtable_vs_baselines.py --run qsens_demo
Writes <run>/baselines.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="qsens_demo", help="output dir of a finished `qsens search`/`qsens demo`")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--inference_num", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    from qsens.data.dataset import select_files
    from qsens.onnx import to_jax
    from qsens.pipeline import load_inputs, make_preprocess, preset_for_model
    from qsens.quant.mixed import plan_from_table, thresholds_from_table
    from qsens.search.evaluators import Config, mixed_similarity
    from qsens.search.problem import Problem
    from qsens.tables import read_cali_table
    from qsens.zoo import zoo_path

    run = Path(args.run)
    res = json.loads((run / "search.json").read_text())
    model = args.model or str(zoo_path("efficientnet_lite0.onnx"))
    dataset = args.dataset or str(zoo_path("images100"))
    fn, params = to_jax(model)
    g = fn.graph
    pp = make_preprocess(g, preset=preset_for_model(model))
    files = select_files(dataset, input_num=0)[: args.inference_num]
    x = load_inputs(files, g, pp)
    new_table = read_cali_table(run / "new_cali_table.txt")
    base = read_cali_table(run / "cali_table")
    plan = plan_from_table(g, base)
    th_new = thresholds_from_table(g, new_table)
    problem = Problem(fn.model, plan, thresholds_from_table(g, base), x)
    searched = res["float_layers"]
    n = len(searched)
    compute = [op.name for op in g.ops if op.type not in ("Input", "Reshape", "Permute") and op.name not in plan.f32_reason]
    all_ops = {op.name for op in g.ops}

    def sim(float_layers):
        s, c, _ = mixed_similarity(problem, Config(frozenset(all_ops - set(float_layers)), th_new))
        return s, c

    rows = {"searched": (searched, *sim(searched))}
    rnd = []
    for seed in range(args.seeds):
        pick = random.Random(seed).sample(compute, n)
        rnd.append((pick, *sim(pick)))
    med = sorted(rnd, key=lambda r: r[1])[len(rnd) // 2]
    rows[f"random (median of {args.seeds})"] = med
    rows["first N"] = (compute[:n], *sim(compute[:n]))
    rows["last N"] = (compute[-n:], *sim(compute[-n:]))
    rows["none (INT8)"] = ([], *sim([]))
    print(f"{n} float layers, new table, {len(files)} images; similarity = 0.5+0.5*cos (TPU-MLIR), cosine = plain")
    print(f"{'choice':<22} {'similarity':>10} {'cosine':>9}  layers")
    for k, (layers, s, c) in rows.items():
        print(f"{k:<22} {s:>10.6f} {c:>9.6f}  {', '.join(layers)}")
    out = {k: {"layers": v[0], "similarity": v[1], "cosine": v[2]} for k, v in rows.items()}
    out["random_all"] = [{"layers": r[0], "similarity": r[1], "cosine": r[2]} for r in rnd]
    beats = all(rows["searched"][1] > rows[k][1] for k in rows if k not in ("searched",))
    out["searched_beats_all_baselines"] = beats
    (run / "baselines.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"searched qtable beats every baseline: {beats}")
    return 0 if beats else 1


if __name__ == "__main__":
    raise SystemExit(main())
