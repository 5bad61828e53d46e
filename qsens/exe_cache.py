"""Compiled executables kept across processes, keyed by what they compute: a warm run neither traces nor lowers.

JAX's persistent compilation cache (:func:`qsens.engine.enable_compilation_cache`) skips XLA's compile, but its key
is the lowered module, so every process still traces each function and lowers it to StableHLO first.  qsens runs
many small executables (Lite0's calibration: 40 per-op float executables, ~60 histogram counters, the tuner's
fake quantizers; the search adds the INT8 ones), and a profile of a warm ``qsens calibrate`` showed tracing and
lowering as ~30 % of its CPU time.  :class:`PersistentJit` is a ``jax.jit`` whose compiled executable is written
once (``jax.experimental.serialize_executable``) under a key made of

* the caller's *complete* key (the same key :class:`qsens.engine.ExecutableCache` shares executables by: op
  type, attributes, constants, weight shapes, layouts, ...), as text;
* the call's tree structure, and each argument's shape, dtype, weak type and device;
* the environment: jax / jaxlib versions, backend and device kind, ``XLA_FLAGS``, the x64 and matmul-precision
  settings, the CPU model and its feature flags, and a hash of qsens's own source files (a code change is a
  new key).

and loaded instead of traced next time.  It is the same compiled code (XLA's persistent cache stores it the same
way), so results are bit-identical.  Off (plain ``jax.jit``) when the compilation cache is not enabled, for keys
whose text is not stable across processes (an object ``repr`` with an address), for arguments on several
devices (sharded placements keep JAX's own path), or with ``QSENS_EXE_CACHE=0``.  A file that fails to load is
deleted and compiled again.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

_DIR: list[Path | None] = [None]
_FP: list[str | None] = [None]


def enable(jax_cache_dir: str | os.PathLike) -> Path | None:
    """Keep executables in ``<jax_cache_dir>/qsens_exe`` (called by :func:`qsens.engine.enable_compilation_cache`)."""
    if os.environ.get("QSENS_EXE_CACHE", "1") == "0":
        _DIR[0] = None
        return None
    d = Path(jax_cache_dir) / "qsens_exe"
    d.mkdir(parents=True, exist_ok=True)
    _DIR[0] = d
    prune(d, int(float(os.environ.get("QSENS_EXE_CACHE_MAX_MB", "1024")) * 2**20))
    return d


def prune(d: Path, max_bytes: int) -> int:
    """Delete the least recently written executables until the folder holds at most ``max_bytes`` (each source
    change of qsens makes a new set; the folder may also be deleted at any time).  Returns the files deleted."""
    try:
        files = [(st.st_mtime, st.st_size, p) for pat in ("*.exe", "*.npy", "*.json") for p in d.glob(pat)
                 for st in (p.stat(),)]
    except OSError:
        return 0
    total = sum(size for _, size, _ in files)
    gone = 0
    for _, size, p in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        p.unlink(missing_ok=True)
        total -= size
        gone += 1
    return gone


def blob_path(tag: str, *arrays: np.ndarray) -> Path | None:
    """Where a value computed from ``arrays`` alone is kept (``<hash>.npy``: ``tag``, :func:`fingerprint` and every
    array's shape, dtype and bytes), or None when the cache is off.  For host-side results as costly as a compile
    (the canonicalizer's merged 1x1 filters: ~0.5 s of every Lite0 process)."""
    if _DIR[0] is None:
        return None
    h = hashlib.sha256(f"{tag}\n{fingerprint()}".encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.tobytes())
    return _DIR[0] / f"{h.hexdigest()}.npy"


def load_blob(path: Path | None, shape: tuple, dtype) -> np.ndarray | None:
    """The array kept at ``path`` if it is there and has the expected shape and dtype (else None: compute it)."""
    if path is None or not path.exists():
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return a if a.shape == tuple(shape) and a.dtype == np.dtype(dtype) else None


def write_blob(path: Path | None, a: np.ndarray) -> None:
    if path is None:
        return
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    try:
        _write_atomic(path, buf.getvalue())
    except OSError:
        pass  # not kept: computed again next time


def note_path(tag: str, text: str) -> Path | None:
    """Where a small JSON value computed from ``text`` alone is kept (``<hash>.json``: ``tag``, :func:`fingerprint`
    and ``text``, a :func:`stable_text`), or None when the cache is off.  For the canonicalizer's shape inferences
    (one ``jax.eval_shape`` trace per distinct op signature: ~0.3 s of every Lite0 process)."""
    if _DIR[0] is None:
        return None
    h = hashlib.sha256("\n".join([tag, fingerprint(), text]).encode())
    return _DIR[0] / f"{h.hexdigest()}.json"


def load_note(path: Path | None):
    """The JSON value kept at ``path``, or None (absent, unreadable or not JSON: compute it)."""
    if path is None:
        return None
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_note(path: Path | None, value) -> None:
    if path is None:
        return
    import json

    try:
        _write_atomic(path, json.dumps(value).encode())
    except OSError:
        pass  # not kept: computed again next time


def _write_atomic(path: Path, data: bytes) -> None:
    """``path`` gets ``data`` whole or not at all (a temporary file per process and thread, then a rename)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def disable() -> None:
    _DIR[0] = None


def _cpu_line() -> str:
    """The CPU model and feature flags: compiled CPU code uses the host's instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln.strip() for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "|".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def fingerprint() -> str:
    """Everything outside the key that the compiled code depends on (computed once per process)."""
    if _FP[0] is None:
        import jaxlib

        h = hashlib.sha256()
        root = Path(__file__).resolve().parent
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
        dev = jax.devices()[0]
        parts = [jax.__version__, getattr(jaxlib, "__version__", "?"), dev.platform, getattr(dev, "device_kind", ""),
                 str(getattr(dev.client, "platform_version", "")), os.environ.get("XLA_FLAGS", ""),
                 str(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision), _cpu_line(),
                 h.hexdigest()]
        _FP[0] = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return _FP[0]


def stable_text(key: Hashable) -> str | None:
    """``repr(key)`` when it is the same in every process and complete, else None: no object addresses, no
    NumPy summarisation (``...`` stands for elided values)."""
    text = repr(key)
    return None if " at 0x" in text or "object at" in text or "..." in text else text


def _leaf_sig(x) -> tuple | None:
    """An argument's static description; None when it lives on several devices (not persisted).  Dispatched on
    the exact type first: this runs for every argument of every call (the search makes ~11,000 calls)."""
    t = type(x)
    if t is np.ndarray or isinstance(x, np.generic):
        return (x.shape, x.dtype.str, False, -1)
    if t is float or t is int or t is bool or t is complex:
        return ((), t.__name__, True, -1)
    if isinstance(x, jax.Array):
        devs = x.sharding.device_set
        if len(devs) != 1:
            return None
        return (x.shape, x.dtype.str, x.weak_type, next(iter(devs)).id)
    return None


class PersistentJit:
    """``jax.jit(fun, static_argnames=...)`` whose compiled executables persist across processes (module doc).

    ``key``: a complete description of ``fun`` (what :class:`qsens.engine.ExecutableCache` shares it by)."""

    def __init__(self, key: Hashable, fun: Callable, static_argnames: Sequence[str] = ()):
        self.key = key
        self.static_argnames = tuple(static_argnames)
        self.jitted = jax.jit(fun, static_argnames=self.static_argnames) if self.static_argnames else jax.jit(fun)
        self._text = stable_text(key)
        self._compiled: dict[Any, Any] = {}
        self.loaded = 0  # executables read from disk by this object (tests, statistics)
        self.written = 0

    def __call__(self, *args, **static):
        if _DIR[0] is None or self._text is None or not all(k in self.static_argnames for k in static):
            return self.jitted(*args, **static)
        leaves, tree = jax.tree_util.tree_flatten(args)
        sigs = tuple(_leaf_sig(x) for x in leaves)
        call_key = (tree, sigs, tuple(sorted(static.items())))
        c = self._compiled.get(call_key)
        if c is None:
            if None in sigs:
                c = self._compiled[call_key] = False
            else:
                c, out = self._load_or_compile(tree, sigs, args, static)
                self._compiled[call_key] = c
                if out is not None:  # a loaded executable's check run is this call's result
                    return out
        if c is False:
            return self.jitted(*args, **static)
        return c(*args)

    def _path(self, tree, sigs, static) -> Path:
        text = "\n".join([fingerprint(), self._text, str(tree), repr(sigs), repr(sorted(static.items()))])
        return _DIR[0] / f"{hashlib.sha256(text.encode()).hexdigest()}.exe"

    def _load_or_compile(self, tree, sigs, args, static):
        """``(executable or False, the outputs of its first run on args or None)``: a loaded executable is checked
        by running it on the call's own arguments, and that run is the call's result (not a second run)."""
        from jax.experimental import serialize_executable as se

        path = self._path(tree, sigs, static)
        if path.exists():
            try:
                payload, in_tree, out_tree = pickle.loads(path.read_bytes())
                c = se.deserialize_and_load(payload, in_tree, out_tree)
                out = jax.block_until_ready(c(*args))  # a bad file fails here (on execution), not at loading
                self.loaded += 1
                return c, out
            except Exception:  # noqa: BLE001 - a truncated / foreign file: compile it again
                path.unlink(missing_ok=True)
        no_jax_cache = _without_jax_cache()
        if no_jax_cache is None:
            return False, None
        # compiled afresh: an executable that XLA-CPU loaded from JAX's own cache serializes without its fused
        # kernels ("Function broadcast_multiply_fusion not found" when the copy runs); the switch is thread-local
        with no_jax_cache:
            c = self.jitted.lower(*args, **static).compile()
        try:
            data = pickle.dumps(se.serialize(c))
            # written only if the copy runs: JAX decides once per process whether its cache is used, so the switch
            # above does not always keep a cache-loaded executable (serialized without its kernels) out
            jax.block_until_ready(se.deserialize_and_load(*pickle.loads(data))(*args))
            _write_atomic(path, data)  # threads compile too (the calibration's statistics threads)
            self.written += 1
        except Exception:  # noqa: BLE001 - not serializable here, or the copy does not run: usable in this process
            pass
        return c, None


def _without_jax_cache():
    """A thread-local context that turns JAX's persistent compilation cache off (None if this JAX has none)."""
    try:
        from jax._src import config as jcfg

        return jcfg.enable_compilation_cache(False)
    except (ImportError, AttributeError, TypeError):
        return None


def persistent_jit(key: Hashable, static_argnames: Sequence[str] = ()):
    """Decorator form of :class:`PersistentJit` for module-level functions (``key``: e.g. the function's name)."""

    def wrap(fun):
        pj = PersistentJit(key, fun, static_argnames)
        pj.__doc__ = fun.__doc__
        pj.__wrapped__ = fun
        return pj

    return wrap
