"""The I/O of ``qsens calibrate --search search_qtable | search_threshold`` (TPU-MLIR 1.30.2's files and logs).

:func:`search_qtable_job` drives :class:`~qsens.search.calisearch.SearchQtable` (checkpoint after every update,
``--resume`` continues); :func:`search_threshold_job` scores the methods' tables.  Files as TPU-MLIR writes them,
next to the calibration table (``-o``): the log ``Search_Qtable`` / ``Search_Threshold``, ``new_cali_table.txt``
(search_qtable), and the qtable at ``--quantize_table``; plus qsens's ``search_qtable.json`` /
``search_threshold.json`` with everything a test or a person compares.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from ..errors import SearchError
from .calisearch import SearchThreshold, all_ops
from .evaluators import Config, run_mixed
from .job import _close_logger, _fingerprint, _make_logger_named, atomic_write, load_checkpoint
from .problem import Problem


def _log_events(log, events, mlir):
    for e in events:
        log.info(e.replace("{mlir}", mlir))


def search_threshold_job(problem_of_method: Callable[[str], Problem], tables: dict[str, str], *,
                         benchmark_method: str, log_dir: str, mlir: str) -> dict:
    """Score every method's tuned table (``tables[m]``: its file name, for the log); the caller copies the
    winner's table to the calibration table.  Returns ``{"scores", "best", "benchmark_method"}``."""
    from .calisearch import SEARCH_METHODS

    log = _make_logger_named(log_dir, "Search_Threshold", False)
    try:
        log.info(f"Quantization threshold calculation method: {list(SEARCH_METHODS)}")
        log.info(f"run float mode: {mlir}")
        st = SearchThreshold(benchmark_method)
        scores = {}
        for m in SEARCH_METHODS:
            log.info(f"Trying multi algorithm threshold of {m} with {tables[m]} in {list(SEARCH_METHODS)}")
            log.info(f"run int8 mode: {mlir}")
            scores[m] = st.score(problem_of_method(m))
        best = st.best(scores)
        log.info(f"{benchmark_method} similarity scores: {scores}")
        log.info(f"optimal_method_name: {best}, optimal_value: {scores[best]}")
        log.info("success")
    finally:
        _close_logger(log)
    return {"scores": scores, "best": best, "benchmark_method": benchmark_method}


def search_qtable_job(problem: Problem, strategy, base_table, *, out_dir: str, qtable_path: str,
                      sample_number: int, mlir: str, key: dict, resume: bool, progress: bool,
                      echo: Callable[[str], None], head_lines: list[str], reused: bool) -> dict | None:
    """Run the strategy with checkpoints, then write TPU-MLIR's files; None on the early exit."""
    from ..tables import dump_cali_table, update_threshold, write_quantize_table

    t0 = time.perf_counter()
    g = problem.graph
    all_int8 = float(np.mean(problem.scorer.per_sample(run_mixed(problem, Config(all_ops(problem), problem.th0)))))
    ckpt = os.path.join(out_dir, f"{strategy.name}.ckpt.json")
    fp = _fingerprint(key)
    state = load_checkpoint(ckpt, fp, strategy.name) if resume else None
    if state is not None:
        echo(f"resuming: search_qtable state of phase {state['phase']!r} from {ckpt}")
    log = _make_logger_named(out_dir, "Search_Qtable", state is not None)
    try:
        if state is None:
            for ln in head_lines:
                log.info(ln)
            log.info(f"run float mode: {mlir}")
            log.info(f"run int8 mode: {mlir}")
            if strategy.name == "fast_search":  # get_fixed_float_layers runs before its early-exit test
                log.info(f"run int8 mode: {mlir}")
            if all_int8 > strategy.expected_cos:
                msg = (f"job success, current int8 cos:{all_int8} is higher than expected_cos:"
                       f"{strategy.expected_cos},no need for mix precsion")
                log.info(msg)
                echo(msg)
                return None
            state = strategy.init(problem, all_int8)
            if strategy.name == "search_qtable":
                log.info(f"all_int8_cos={all_int8} with default mse_tune calitable")
                log.info(f"run int8 mode: {mlir}")
                log.info("layer name check pass !")
                log.info(f"all layer number: {len(g.ops)}")
                log.info(f"all layer number no float: {len(state['layer_names_quant'])}")

        from tqdm import tqdm

        total = len(state["types"]) + len(state.get("layer_names_quant") or state.get("layer_names") or [None]) + 1
        bar = tqdm(total=total, desc="search_qtable", unit="step", file=sys.stderr, dynamic_ncols=True,
                   disable=not progress)
        t_layers = time.perf_counter()
        carry = None  # the strategy's in-memory state between updates (search_qtable: the mixed prefix)
        while not strategy.done(problem, state):
            before = state["phase"]
            state, carry, events = strategy.update(problem, state, carry=carry)
            if before == "layers" and state["phase"] != "layers":
                events = events + [f"total time of sensitive_layer search is: {time.perf_counter() - t_layers}"]
            if before == "screen" and state["phase"] == "done" and not state.get("search_layers"):
                raise SearchError("search_qtable: no layer of a sensitive type to search (TPU-MLIR: 'Layer names are "
                                  "empty. All operators skipped in search phase.')")
            _log_events(log, events, mlir)
            if state["phase"] == "layers" and before == "screen":
                t_layers = time.perf_counter()
            atomic_write(ckpt, json.dumps({"key": fp, **state}))
            bar.update(1)
        bar.close()
        final, cos = state["final_fp"], state["final_cos"]
        ncal = None
        if strategy.name == "search_qtable":
            # new_cali_table.txt: the base table with every searched layer's best threshold (TPU-MLIR's update_to)
            table = base_table
            for r in state["layers"]:
                table = update_threshold(table, g.op(r["name"]).outputs[0], r["best_th"])
            ncal = os.path.join(out_dir, "new_cali_table.txt")
            dump_cali_table(ncal, table)
        log.info(">>>run result:")
        write_quantize_table(qtable_path, [(n, "F32") for n in final], sample_number=sample_number)
        log.info(f"float layer number: {len(final)}, mix model outputs_cos: {cos:.6f}")
        log.info(f"int8 outputs_cos:{state['all_int8_cos']:.6f} old")
        log.info(f"mix model outputs_cos:{cos:.6f}")
        log.info(f"Output mix quantization table to {os.path.basename(qtable_path)}")
        log.info(f"total time:{time.perf_counter() - t0}")
        th = np.asarray(state.get("th", problem.th0), np.float32)
        true_cos = float(np.mean(problem.scorer.per_sample(run_mixed(problem, Config(all_ops(problem) - set(final), th)))))
        res = {"state": state, "float_layers": final, "reported_mix_similarity": cos,
               "true_mix_similarity": true_cos, "all_int8_similarity": state["all_int8_cos"],
               "reused_existing_table": reused,
               "defects": {"D1_all_searched_layers_written": bool(state.get("set_fp") is not None
                                                                  and not state["probes"] and final != state["set_fp"]),
                           "D2_last_probe": bool(state.get("probes")) and not cos > strategy.expected_cos,
                           "D3_table_not_updated": strategy.name == "search_qtable",
                           "D5_fast_search_ignores_expected_cos": strategy.name == "fast_search"},
               "files": {"qtable": qtable_path, "new_cali_table": ncal, "log": os.path.join(out_dir, "Search_Qtable")},
               "seconds": time.perf_counter() - t0}
        atomic_write(os.path.join(out_dir, f"{strategy.name}.json"), json.dumps(res, indent=1) + "\n")
        if os.path.exists(ckpt):
            os.remove(ckpt)
        return res
    finally:
        _close_logger(log)
