"""Calibration: TPU-MLIR-compatible activation statistics and thresholds (MAX, percentile9999, KL, MSE).

Streaming collector (optax-style pure functions over a NamedTuple state)::

    state = calib.init(names, n_ops, n_samples=N, mode="v2")
    for off, batch in batches:                      # batch: {tensor: array (B, ...)}, B images
        state = calib.update(state, batch, off)
    results = calib.finalize(state)                 # {tensor: CalibResult}
    th = results[name].threshold("kl")

v1 (two passes): ``update`` over the data, ``state = calib.begin_histograms(state)``, ``update`` over the same
data again, ``finalize``.
"""

from qsens.calib.histogram import KL_MAX_BINS as KL_MAX_BINS
from qsens.calib.histogram import N_BINS as N_BINS
from qsens.calib.histogram import HistState as HistState
from qsens.calib.histogram import combine_histogram as combine_histogram
from qsens.calib.histogram import prepare_for_kl as prepare_for_kl
from qsens.calib.kl import kl_divergences as kl_divergences
from qsens.calib.kl import kl_threshold as kl_threshold
from qsens.calib.kl import kl_thresholds as kl_thresholds
from qsens.calib.methods import METHODS as METHODS
from qsens.calib.methods import ZERO_TH as ZERO_TH
from qsens.calib.methods import CalibResult as CalibResult
from qsens.calib.methods import canonicalize as canonicalize
from qsens.calib.methods import check_finite as check_finite
from qsens.calib.methods import get_threshold as get_threshold
from qsens.calib.methods import mse_sample as mse_sample
from qsens.calib.methods import percentile as percentile
from qsens.calib.methods import percentile_level as percentile_level
from qsens.calib.methods import table_threshold as table_threshold
from qsens.calib.methods import zero_guard as zero_guard
from qsens.calib.stats import CalibState as CalibState
from qsens.calib.stats import adopt_v2_histograms as adopt_v2_histograms
from qsens.calib.stats import begin_histograms as begin_histograms
from qsens.calib.stats import finalize as finalize
from qsens.calib.stats import init as init
from qsens.calib.stats import update as update
from qsens.calib.stats import update_many as update_many
from qsens.calib.tuner_math import TUNE_STEPS as TUNE_STEPS
from qsens.calib.tuner_math import distance as distance
from qsens.calib.tuner_math import fake_quant as fake_quant
from qsens.calib.tuner_math import host_distance as host_distance
from qsens.calib.tuner_math import mean_distance as mean_distance
from qsens.calib.tuner_math import select as select
from qsens.calib.tuner_math import tune_candidates as tune_candidates
