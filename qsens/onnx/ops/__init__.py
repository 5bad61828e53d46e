"""ONNX op implementations, one module per family.  Importing ``ALL`` registers every op."""

from . import conv, elementwise, nn, pool, shape  # noqa: F401

ALL = (conv, elementwise, nn, pool, shape)
