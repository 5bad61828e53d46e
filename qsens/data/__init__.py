"""Sample selection (TPU-MLIR ``DataSelector``), image preprocessing (TPU-MLIR ``preprocess``), ImageNet labels."""

from qsens.data.dataset import IMAGE_EXTS, file_kind, load_npz_sample, select_files
from qsens.data.labels import load_labels_file, resolve_labels
from qsens.data.preprocess import (
    PRESETS,
    ParseError,
    Preprocess,
    iter_batches,
    load_batch,
    load_image,
    parse_dims,
    parse_floats,
    parse_input_shapes,
)

__all__ = [
    "IMAGE_EXTS",
    "PRESETS",
    "ParseError",
    "Preprocess",
    "file_kind",
    "iter_batches",
    "load_batch",
    "load_image",
    "load_labels_file",
    "load_npz_sample",
    "parse_dims",
    "parse_floats",
    "parse_input_shapes",
    "resolve_labels",
    "select_files",
]
