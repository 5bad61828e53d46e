"""ONNX -> JAX conversion and the canonical (TPU-MLIR Top) graph."""

from .convert import Model, run_graph, run_op, to_jax
from .ir import Graph, Op
from .registry import supported_ops

__all__ = ["Graph", "Model", "Op", "run_graph", "run_op", "supported_ops", "to_jax"]
