"""qsens: INT8 sensitive-layer search for BM1684 in JAX."""

from .hostmem import keep_freed_memory as _keep_freed_memory

_keep_freed_memory()  # before XLA starts its threads; see qsens/hostmem.py (QSENS_MALLOC=system to opt out)
