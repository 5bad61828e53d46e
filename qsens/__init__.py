"""qsens: INT8 sensitive-layer search for BM1684 in JAX.

``qsens.to_jax(model, input_shapes)`` converts an ONNX model to ``(apply_fn, params)`` (:func:`qsens.onnx.to_jax`).
It is loaded on first use (PEP 562 module ``__getattr__``): ``import qsens`` itself does not import JAX, so that
the malloc policy below is set before XLA starts its threads (see qsens/hostmem.py).
"""

from typing import TYPE_CHECKING

from .hostmem import keep_freed_memory as _keep_freed_memory

_keep_freed_memory()  # before XLA starts its threads; see qsens/hostmem.py (QSENS_MALLOC=system to opt out)

if TYPE_CHECKING:  # static checkers and IDEs see the real symbol; at run time it comes from __getattr__
    from .onnx import to_jax as to_jax

#: Public name -> submodule that defines it, imported on first access (importing it imports JAX).
_LAZY = {"to_jax": ".onnx"}

__all__ = ["to_jax"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
