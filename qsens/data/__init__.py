"""Sample selection (TPU-MLIR ``DataSelector``) and image preprocessing (TPU-MLIR ``preprocess``)."""

from qsens.data.dataset import IMAGE_EXTS, file_kind, load_npz_sample, select_files
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
    "load_npz_sample",
    "parse_dims",
    "parse_floats",
    "parse_input_shapes",
    "select_files",
]
