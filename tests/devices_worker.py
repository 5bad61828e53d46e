"""Run by tests/test_devices.py in a subprocess with forced host devices (XLA_FLAGS must be set before JAX starts).

``python tests/devices_worker.py DIR``: builds a small model and dataset in DIR, then prints one JSON object with
the sensitive-layer search (FloatPrefix) and MixedPrefix losses for each placement / memory budget:
``{"n_devices": ..., "runs": {label: {...}}}``.
"""

from __future__ import annotations

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from qsens import devices  # noqa: E402
from qsens.calibrate import calibrate  # noqa: E402
from qsens.onnx import to_jax  # noqa: E402
from qsens.pipeline import load_inputs  # noqa: E402
from qsens.search import memory  # noqa: E402
from qsens.search.evaluators import Config, MixedPrefix  # noqa: E402
from qsens.search.job import SearchConfig, search  # noqa: E402
from qsens.search.problem import Problem  # noqa: E402
from qsens.tables import CaliTable  # noqa: E402
from tests import search_models as sm  # noqa: E402


def main(d: str) -> None:
    import jax

    model_path = sm.save(sm.resnet_ish(blocks=2, hw=16, seed=2), os.path.join(d, "rn.onnx"))
    sm.npy_dataset(os.path.join(d, "data"), n=11, shape=(1, 3, 16, 16), seed=4)
    files = sorted(glob.glob(os.path.join(d, "data", "*.npy")))
    fn, _ = to_jax(model_path)
    model = fn.model
    methods = ("max", "percentile9999", "kl")
    cal = calibrate(model, files, None, methods=methods, tune_num=0, progress=False)
    base = CaliTable(cal.table_entries("kl", True))
    inputs = load_inputs(files, model.graph, None)  # 11 images: chunks of 3 leave padding on every mesh
    runs = {}
    for label, spec, budget in (("1dev", "1", None), ("2dev", "2", None), ("4dev", "all", None),
                                ("1dev_nocache", "1", 0), ("2dev_halfcache", "2", "half")):
        pl = devices.set_default(devices.select(spec))
        memory.set_budget(None)
        if budget == "half":  # room for one of the two chunks of 6 images
            g = model.graph_at(3 * pl.n)
            memory.set_budget(memory.carry_bytes_per_image(g) * 3 * pl.n + 1)
        elif budget is not None:
            memory.set_budget(budget)
        cfg = SearchConfig(methods=methods, strategy="fast", expected_cos=1.0)
        res = search(model, base, cal.tuned, inputs, cfg, out_dir=os.path.join(d, label), progress=False,
                     echo=lambda s: None, chunk=3)
        p = Problem.from_table(model, base, inputs, chunk=3)
        all_ops = frozenset(op.name for op in p.graph.ops)
        ev = MixedPrefix(p, Config(all_ops, p.th0))
        carry = ev.init(p, 0)
        loo = []
        for op in p.graph.ops:  # leave-one-out: every op float in turn, the rest INT8, on the INT8 prefix
            loo.append(ev.losses(p, [Config(all_ops - {op.name}, p.th0)], carry)[0])
            carry = ev.advance(p, carry)
        runs[label] = {
            "placement": p.placement.describe(), "chunk": p.chunk, "n_chunks": len(p.chunks),
            "resident": memory.resident_chunks(p),
            "losses": [[c.loss for c in o.candidates] for o in res.ops],
            "best": [o.best_method for o in res.ops], "float_layers": list(res.float_layers),
            "new_thresholds": {k: float(v) for k, v in res.new_thresholds.items()},
            "all_int8": res.int8_similarity, "loo": loo, "fallbacks": ev.fallbacks,
            "sharding": str(p.engine.input_env(p.chunks[0])[p.graph.inputs[0]].sharding),
        }
    print(json.dumps({"n_devices": len(jax.devices()), "runs": runs}))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main(sys.argv[1])
