"""Where the inference images live: one device, a mesh of local devices, or a mesh across processes.

qsens shards the *images* (data parallel): a :class:`Placement` over ``n`` devices turns each batch of
``n x chunk`` images into one global array split along the batch axis (``NamedSharding(mesh, P("data"))``);
the per-op executables are the same ``jax.jit`` functions as on one device, and XLA's SPMD partitioner runs
each on every device's ``chunk`` images at once (no communication: inference never mixes images).  Weights
are replicated once per placement.  Every device computes exactly the per-device program of the one-device
run (same shapes, ``chunk`` images), so losses and choices are identical to one device (tested with forced
host devices; multi-process tested with 2 local processes).

- ``--devices 1`` (default): the single default device, exactly the code path qsens always had.
- ``--devices N|all``: the first ``N`` (or all) of ``jax.devices()`` — across all processes when
  :func:`initialize_distributed` ran (multi-host: ``jax.distributed.initialize``; every process runs the same
  search on the same images, each computes its own devices' rows, results are gathered with
  ``multihost_utils.process_allgather``; only process 0 writes files, see :func:`is_writer`).

Calibration stays on the local default device (its statistics are host-side; every process computes the
same table).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from .errors import QsensError


class Placement:
    """The devices a problem's images are sharded over (``devices=None``: the default device, unsharded)."""

    def __init__(self, devices=None):
        self.devices = tuple(devices) if devices else ()
        self._weights: dict[int, Any] = {}
        if self.devices and len(self.devices) > 1:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            self.mesh = Mesh(np.array(self.devices), ("data",))
            self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
            self.replicated = NamedSharding(self.mesh, PartitionSpec())
        else:
            self.mesh = None

    @property
    def n(self) -> int:
        return len(self.devices) if self.mesh is not None else 1

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    def describe(self) -> str:
        if not self.sharded:
            return "1 device"
        kinds = sorted({d.platform for d in self.devices})
        procs = len({d.process_index for d in self.devices})
        return f"{self.n} {'/'.join(kinds)} devices" + (f" in {procs} processes" if procs > 1 else "")

    # ------------------------------------------------------------------------------------------ arrays
    def put(self, x):
        """A host batch ``(n x chunk, ...)`` -> a device array (split along axis 0 over the mesh)."""
        if not self.sharded:
            from .engine import to_device

            return to_device(x)
        if isinstance(x, jax.Array) and x.sharding == self.batch_sharding:
            return x
        a = np.asarray(x)
        if a.shape[0] % self.n:
            raise QsensError(f"a batch of {a.shape[0]} images does not split over {self.n} devices")
        return jax.make_array_from_callback(a.shape, self.batch_sharding, lambda idx: a[idx])

    def replicate(self, x):
        if not self.sharded:
            return x
        a = np.asarray(x)
        return jax.make_array_from_callback(a.shape, self.replicated, lambda idx: a[idx])

    def weights(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """``params`` replicated over the mesh (once per params dict)."""
        if not self.sharded:
            return params
        key = id(params)
        if key not in self._weights:
            self._weights[key] = (params, {k: self.replicate(v) for k, v in params.items()})
        return self._weights[key][1]

    def args(self, x):
        """Small per-call arguments (thresholds, INT8 parameters): host values on a mesh (jit replicates them)."""
        if not self.sharded:
            return x
        return jax.tree_util.tree_map(lambda v: np.asarray(v) if isinstance(v, jax.Array) else v, x)


def fetch(x) -> np.ndarray:
    """A device array on the host, whole (gathered from every process when it spans several)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


_default = [Placement()]


def default() -> Placement:
    """The placement new problems use (set by ``--devices``; one device unless changed)."""
    return _default[0]


def set_default(p: Placement) -> Placement:
    _default[0] = p
    return p


def select(spec: str | int | None) -> Placement:
    """``--devices``: ``1``/None (the default device), ``N`` (the first N of ``jax.devices()``) or ``all``."""
    if spec is None or str(spec) == "1":
        return Placement()
    devs = jax.devices()
    if str(spec).lower() == "all":
        n = len(devs)
    else:
        try:
            n = int(spec)
        except ValueError:
            raise QsensError(f"--devices {spec!r}: give a number of devices or 'all'") from None
        if n < 1 or n > len(devs):
            raise QsensError(f"--devices {n}: this run sees {len(devs)} device(s) ({devs[0].platform}); on a CPU, "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={max(n, 2)} makes more") from None
    return Placement(devs[:n]) if n > 1 else Placement()


# ---------------------------------------------------------------------------------------------- multi-host
def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """``jax.distributed.initialize`` from flags or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``; returns False (nothing done) when neither gives a coordinator.  On the CPU backend the
    processes talk through gloo."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        return False
    num = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if num is None or pid is None:
        raise QsensError("multi-process run: give --num_processes and --process_id (or JAX_NUM_PROCESSES and "
                         "JAX_PROCESS_ID) with the coordinator address")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - option absent in other jax versions: the default collectives then
        pass
    jax.distributed.initialize(coordinator, num_processes=int(num), process_id=int(pid))
    _DISTRIBUTED[0] = True
    return True


_DISTRIBUTED = [False]  # jax.distributed was initialized by this process (it must shut down cleanly)


def distributed() -> bool:
    return _DISTRIBUTED[0]


def process_index() -> int:
    return jax.process_index()


def is_writer() -> bool:
    """Only process 0 writes files in a multi-process run."""
    return jax.process_index() == 0
