"""Host memory policy: keep freed memory in the process (glibc malloc), so XLA-CPU reuses warm pages.

XLA-CPU allocates each executable's temporary buffer (Lite0 batch 32: 297 MB) and its outputs afresh on every
call.  glibc serves blocks that large with ``mmap`` (or from per-thread arenas that it hands back to the kernel),
so every call page-faults all of it again: 76,000 minor faults and ~60 ms of Lite0's 270 ms forward on the
2-core machine, and a 51 MB elementwise op ran at 8 GB/s instead of 90 GB/s.  onnxruntime avoids this with its
own arena allocator.  :func:`keep_freed_memory` gives the same effect with three ``mallopt`` settings:

* ``M_MMAP_MAX = 0``: large blocks come from the heap, not from fresh ``mmap`` regions;
* ``M_TRIM_THRESHOLD`` at its maximum: freed heap memory is not returned to the kernel;
* ``M_ARENA_MAX = 1``: XLA's worker threads share the main heap (thread arenas are capped at 64 MB and
  would still ``mmap``).

Peak RSS is unchanged (the process keeps what it once needed, no more) *when one phase's blocks fit the holes
another left*.  They often do not: EfficientNet-Lite2's search, whose cached prefix activations (62 MB blocks,
long-lived) interleave with XLA's temporaries, held a 1.34 GB heap for 0.77 GB of live blocks.  So under a memory
budget (``--max_memory``, :func:`qsens.search.memory.set_budget`) :func:`bound_freed_memory` switches to the
opposite trade: blocks of 4 MB and more are ``mmap``-ed and handed back when freed (no fragmentation from them;
each call faults its large buffers in again, some speed for a bounded peak), and the free heap is trimmed once.
qsens applies the default policy when imported, on glibc Linux only; set ``QSENS_MALLOC=system`` to keep the C library's defaults.  Import qsens before JAX runs its
first computation: XLA's worker threads take their malloc arenas then, and arenas already taken stay (qsens
warns once when it finds JAX's CPU backend already started).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the policy once; returns whether it is in effect (False off glibc or with QSENS_MALLOC=system)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1))
    if _applied and _jax_cpu_started():
        import warnings

        warnings.warn("qsens was imported after JAX started its CPU backend: XLA's threads keep their own malloc "
                      "arenas, so CPU forwards may run up to ~30% slower (page faults on every call); import qsens "
                      "before the first JAX computation (see qsens/hostmem.py)", RuntimeWarning, stacklevel=3)
    return _applied


M_MMAP_THRESHOLD = -3
#: blocks from this size on are mmap-ed under a memory budget (Lite2's activations are 16-62 MB per chunk)
BOUNDED_MMAP_THRESHOLD = 4 << 20


def bound_freed_memory() -> bool:
    """Large blocks back to the kernel when freed (see the module docstring); the free heap trimmed now.

    Returns whether the policy is in effect (False off glibc or with ``QSENS_MALLOC=system``, which keeps the C
    library's own defaults)."""
    # the threshold also ends glibc's dynamic one; 128 kB is glibc's default trim threshold (free heap tops go back)
    return _mallopt((M_MMAP_THRESHOLD, BOUNDED_MMAP_THRESHOLD), (M_MMAP_MAX, 1 << 20), (M_TRIM_THRESHOLD, 128 << 10),
                    trim=True)


def _mallopt(*settings: tuple[int, int], trim: bool = False) -> bool:
    """glibc ``mallopt`` of each ``(param, value)`` (then ``malloc_trim(0)`` if ``trim``); True if all took.
    False, and nothing changed, with ``QSENS_MALLOC=system``, off Linux or off glibc (musl and others)."""
    if os.environ.get("QSENS_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        ok = all([libc.mallopt(p, v) == 1 for p, v in settings])  # a list: every setting is applied
        if trim:
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return ok


def _jax_cpu_started() -> bool:
    """Whether JAX already created its CPU client (private JAX state; False when it cannot be read)."""
    xb = sys.modules.get("jax._src.xla_bridge")
    backends = getattr(xb, "_backends", None) if xb is not None else None
    return bool(backends) and "cpu" in backends
