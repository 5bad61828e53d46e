"""ONNX op implementations, one module per family.  Importing ``ALL`` registers every op."""

from . import conv, elementwise, extra, nn, norm, pool, resize, shape  # noqa: F401

ALL = (conv, elementwise, extra, nn, norm, pool, resize, shape)
