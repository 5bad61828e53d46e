"""What every experiment driver shares: configs, resumable qsens runs, run metadata, deterministic JSON.

A driver is a thin script over qsens's API and CLI.  Its config is ``experiments/configs/<experiment>.json``
(a driver flag overrides a config key).  Each run writes ``experiments/results/<experiment>/<run>.json``:

* ``meta``: the seed, package versions, device, git revision (what reproduces the numbers),
* ``timings``: wall times (the only part that may differ between two runs with the same seeds),
* everything else: the numbers the README and the paper use, rounded to 6 decimals so a re-run on the same
  machine writes the same bytes.  ``strip_timings`` gives the part that must be byte-identical.

qsens verbs run as fresh processes (wall time is the process's) with a ``<log>.done`` record, so a killed
experiment resumes where it stopped when it is given the same ``--work`` folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CONFIGS = ROOT / "experiments" / "configs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.common (machine description)


def load_config(name: str, overrides: dict | None = None) -> dict:
    """``configs/<name>.json`` with the non-None ``overrides`` applied."""
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg


#: per zoo model: (search folder, held-out folder or None = the rest of the search folder's seeded shuffle,
#: labelled folder); the ImageNet models search on images100/ and are labelled on the real photos of images/
FOLDERS = {"mnist_mbv2": ("mnist_train", "mnist_test", "mnist_test")}
DEFAULT_FOLDERS = ("images100", None, "images")


def model_folders(key: str) -> tuple[str, str | None, str]:
    """``(search, held_out or None, labelled)`` zoo folders of model ``key`` (:data:`FOLDERS`)."""
    return FOLDERS.get(key, DEFAULT_FOLDERS)


def driver_args(experiment: str, doc: str, argv=None, work_help: str = "keep the qsens runs here (a killed run "
                "resumes)") -> tuple[dict, Path, Path]:
    """A driver's flags ``--models`` (comma list, default the config's), ``--work`` and ``--out``; returns the
    config (with ``--models`` applied), the results folder and the work folder (a fresh temp dir by default)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--models", default=None, help="comma list (default: the config's)")
    ap.add_argument("--work", default=None, help=work_help)
    ap.add_argument("--out", default=None, help=f"results folder (default {RESULTS / experiment})")
    a = ap.parse_args(argv)
    cfg = load_config(experiment, {"models": a.models.split(",") if a.models else None})
    out = Path(a.out) if a.out else RESULTS / experiment
    return cfg, out, Path(a.work or tempfile.mkdtemp(prefix=f"{experiment}_"))


def qtable_ops(path: Path) -> list[str]:
    """The ops of a qtable file, in its order (none when the file is absent: the tool exited early)."""
    if not Path(path).exists():
        return []
    return [ln.split()[0] for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def sensitive_search(model: str, folder: str, cfg: dict, work: Path, max_float_layers: int) -> tuple[Path, float]:
    """``qsens search`` (TPU-MLIR's run_sensitive_layer) on ``cfg``'s images, seed and search images, with
    ``--expected_cos 0.9999`` so it really runs; its output folder ``work/search`` and its wall time (resumable)."""
    work.mkdir(parents=True, exist_ok=True)
    d = work / "search"
    wall = run_qsens(["search", model, "--dataset", folder, "--input_num", str(cfg["images"]), "--seed",
                      str(cfg["seed"]), "--inference_num", str(cfg["inference"]), "--max_float_layers",
                      str(max_float_layers), "--expected_cos", "0.9999", "--out_dir", str(d), "-q"], None,
                     work / "search.log")
    return d, wall


def run_qsens(cmd: list[str], env, log: Path) -> float:
    """Run ``python -m qsens CMD`` (environment ``env``; None: ours) with output to ``log``; its wall time.
    A finished run (``<log>.done`` with the same command) is not redone, so a killed experiment resumes when
    pointed at the same folder."""
    done = Path(str(log) + ".done")
    if done.exists():
        rec = json.loads(done.read_text())
        if rec["cmd"] == cmd:
            return rec["wall_s"]
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-m", "qsens", *cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise SystemExit(f"qsens {' '.join(cmd)} failed: see {log}\n{log.read_text()[-3000:]}")
    wall = time.perf_counter() - t
    done.write_text(json.dumps({"cmd": cmd, "wall_s": wall}))
    return wall


def file_sha(path) -> str:
    """sha256 of a file (results name the exact model bytes they were computed on)."""
    from qsens.search.workflows import file_sha as sha

    return sha(str(path))


def meta(seed: int, config: dict) -> dict:
    """Seed, config (without its model list), package versions, device and git revision of this run."""
    import importlib.metadata as md

    from benchmarks.common import machine

    m = machine()
    versions = {}
    for pkg in ("qsens", "jax", "jaxlib", "numpy", "onnx", "flax", "optax", "onnxruntime", "torch"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    config = {k: v for k, v in config.items() if k != "models"}  # one JSON is one model: the list is no setting
    return {"seed": seed, "config": config, "versions": versions, "python": m["python"], "device": m["device"],
            "cpu": m["cpu"], "cores": m["cores"], "git": m["git"]}


def run_models(experiment: str, cfg: dict, out: Path, work: Path, run_model) -> list[dict]:
    """``run_model(key, cfg, work / key)`` for each model of ``cfg``, each result written with ``meta`` first;
    returns the results of every model of the experiment's config found in ``out`` (models can run separately)."""
    for key in cfg["models"]:
        res = {"meta": meta(cfg["seed"], cfg), **run_model(key, cfg, work / key)}
        print(f"wrote {write_result(experiment, key, res, out)}", flush=True)
    keys = list(dict.fromkeys(load_config(experiment)["models"] + cfg["models"]))
    return [json.loads(p.read_text()) for k in keys if (p := out / f"{k}.json").exists()]


def rounded(x, nd: int = 6):
    """``x`` with every float rounded to ``nd`` decimals (JSON that re-runs reproduce byte for byte)."""
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, dict):
        return {k: rounded(v, nd) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v, nd) for v in x]
    return x


def strip_timings(result: dict) -> dict:
    """The part of a result JSON that a re-run with the same seeds reproduces exactly (no ``timings``, no
    ``meta.git``/``meta.device`` which name the checkout and machine)."""
    out = {k: v for k, v in result.items() if k != "timings"}
    if "meta" in out:
        out["meta"] = {k: v for k, v in out["meta"].items() if k not in ("git", "device", "cpu", "cores")}
    return out


def write_result(experiment: str, run: str, data: dict, out_dir: Path | None = None) -> Path:
    """Write ``<out_dir or results/experiment>/<run>.json`` (floats rounded, keys in insertion order)."""
    d = Path(out_dir) if out_dir is not None else RESULTS / experiment
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{run}.json"
    p.write_text(json.dumps(rounded(data), indent=1) + "\n")
    return p


class Evaluator:
    """Exact scores of configurations (a calibration table + the ops kept in float) of one model on named image
    sets: the BM1684 INT8 simulation of qsens on every image, against the FP32 model on the same images.

    ``sets`` maps a set name to its image files; labels come from the zoo manifest (``labels_if_known``).
    ``evaluate`` returns the similarity (TPU-MLIR's 0.5+0.5cos, mean over images), the plain cosine, top-1
    agreement with FP32 and, where labels exist, labelled top-1/top-5; with ``ci=True`` each labelled rate also
    gets its percentile-bootstrap 95 % interval (:func:`qsens.metrics.bootstrap_ci`, ``n_boot`` resamples,
    seed ``boot_seed``).
    """

    def __init__(self, model: str, sets: dict, input_shapes=None, n_boot: int = 2000, boot_seed: int = 0,
                 preset: str | None = None):
        from qsens.onnx import to_jax
        from qsens.pipeline import load_inputs, make_preprocess, preset_for_model
        from qsens.zoo import labels_if_known

        fn, _ = to_jax(model, input_shapes)
        self.graph, self.model = fn.graph, fn.model
        pp = make_preprocess(self.graph, preset=preset or preset_for_model(model))  # preset: e.g. an aided copy's
        self.x = {k: load_inputs(f, self.graph, pp) for k, f in sets.items()}
        self.labels = {k: labels_if_known(f) for k, f in sets.items()}
        self.n_boot, self.boot_seed = n_boot, boot_seed
        self._problems: dict = {}

    def problem(self, table, which: str):
        from qsens.search.problem import Problem
        from qsens.tables import read_cali_table

        k = (str(table), which)
        if k not in self._problems:
            self._problems[k] = Problem.from_table(self.model, read_cali_table(str(table)), self.x[which])
        return self._problems[k]

    def labelled(self, logits, which: str, ci: bool) -> dict | None:
        """Labelled top-1/top-5 of ``logits`` on set ``which`` (``None`` without labels)."""
        from qsens.metrics import bootstrap_ci
        from qsens.search.job import label_accuracy, label_hits

        if self.labels[which] is None:
            return None
        r = label_accuracy(logits, self.labels[which])
        if ci:
            for k, hits in zip(("top1", "top5"), label_hits(logits, self.labels[which])):
                _, lo, hi = bootstrap_ci(hits, n_boot=self.n_boot, seed=self.boot_seed)
                r[f"{k}_ci95"] = [lo, hi]
        return r

    def fp32(self, table, which: str, ci: bool = False) -> dict:
        """The FP32 model's labelled accuracy (the reference outputs of ``problem(table, which)``)."""
        import numpy as np

        p = self.problem(table, which)
        ref = np.asarray(next(iter(p.ref_outputs.values())))
        r: dict = {"similarity": 1.0, "cosine": 1.0}
        if ref.ndim == 2 and ref.shape[1] > 1:
            r["top1_agreement"] = 1.0
            lab = self.labelled(ref, which, ci)
            if lab is not None:
                r["labelled"] = lab
        return r

    def evaluate(self, table, float_layers, which: str, ci: bool = False) -> dict:
        import numpy as np

        from qsens.search.evaluators import Config, run_mixed

        p = self.problem(table, which)
        outs = run_mixed(p, Config(frozenset(self.graph.op_names) - set(float_layers), p.th0))
        o = np.asarray(outs[next(iter(outs))])
        ref = np.asarray(p.ref_outputs[next(iter(p.ref_outputs))])
        r = {"similarity": float(np.mean(p.scorer.per_sample(outs))), "cosine": p.scorer.cosine(outs)}
        if ref.ndim == 2 and ref.shape[1] > 1:
            r["top1_agreement"] = float(np.mean(o.argmax(1) == ref.argmax(1)))
            lab = self.labelled(o, which, ci)
            if lab is not None:
                r["labelled"] = lab
        return r
