"""Errors are part of qsens's API.

Every error a user can cause (bad model file, unsupported op, bad dataset, a table that does not match
the model, NaN activations, ...) is raised as a :class:`QsensError` subclass whose message is ONE line
naming the file / node / op at fault and the fix.  The CLI prints ``qsens: error: <message>`` and exits
with status 2; it never shows a traceback for these (set ``QSENS_DEBUG=1`` to see one).
"""


class QsensError(Exception):
    """Base class of all user-facing qsens errors (one-line message, non-zero exit in the CLI)."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: the CLI prints it as is.
        super().__init__(" ".join(str(message).split()))


class ModelError(QsensError):
    """Missing, truncated or invalid ONNX model; dynamic shapes without --input_shapes."""


class UnsupportedOpError(ModelError):
    """An ONNX node whose op type (at the model's opset) has no qsens implementation."""


class DatasetError(QsensError):
    """Empty/missing dataset, mixed file kinds, unreadable image, wrong npz keys or shapes."""


class TableError(QsensError):
    """Calibration table / qtable that cannot be parsed or does not match the model."""


class NumericsError(QsensError):
    """NaN/Inf activations and similar numeric failures."""


class SearchError(QsensError):
    """Bad search configuration (post-process file, inference_num, output dir)."""
