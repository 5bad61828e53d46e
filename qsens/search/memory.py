"""Memory planner: how many chunks of images keep their prefix activations cached.

The prefix evaluators (:class:`~qsens.search.evaluators.FloatPrefix`, :class:`~qsens.search.evaluators.MixedPrefix`)
keep, for every chunk of inference images, the live tensors after the ops already walked: one forward's work
per op instead of one per candidate.  That cache grows with the images (EfficientNet-Lite2 at 260 px holds
6.2 MB per image after its first blocks: 1.9 GB for 300 images).  The planner sizes it from the graph's static
shapes, never from data: the largest live set over all op boundaries, per image, times the images of a chunk.
Chunks that do not fit the budget are *not resident*: their prefix is recomputed from the input when an op
needs it (the same executables, so the same values; the cost is at most one extra float forward of the prefix
per op for those chunks, about a third more work than the candidates' suffixes, which dominate).

The cache is the part that grows with the images; a carry being advanced hands each chunk's old tensors back as
its new ones are made (:func:`~qsens.search.evaluators.advance_envs`), so it peaks one chunk above the budget.

Under a budget the rest of the job is kept small too: the inference images stay 8-bit pixels until a chunk goes
to the device (:class:`~qsens.data.preprocess.PixelBatch`, a quarter of their float32 size, the same values), and
the tuner's activations are streamed (:class:`qsens.calibrate.TuneStream`).  Always: a model's ONNX initializers are
released once converted (:meth:`qsens.onnx.canonical.Canonicalizer._release`, models with 32 MB of them or more),
the weights have one host copy on CPU, and the memo of INT8 parameters is bounded
(:data:`~qsens.search.problem.QP_CACHE_BYTES`).

Budget: ``--max_memory`` (bytes; ``1.5G``, ``800M``; it also bounds the malloc policy, :func:`set_budget`), else
half of what the devices can hold (accelerators: ``memory_stats()['bytes_limit']``; CPU: half of the host's
``MemAvailable``).
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import QsensError

_budget: list[int | None] = [None]


def parse_bytes(text: str | int | float) -> int:
    """``1.5G``, ``800M``, ``512k``, ``2e9`` -> bytes."""
    if isinstance(text, int | float):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise QsensError(f"--max_memory {text!r}: give bytes like 1.5G, 800M or 2e9")
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def set_budget(nbytes: int | None) -> None:
    """The process's cache budget in bytes (None: the default from the devices).

    A budget also switches the host's malloc policy to hand large freed blocks back
    (:func:`qsens.hostmem.bound_freed_memory`): without it the heap kept ~0.6 GB of holes on Lite2."""
    _budget[0] = None if nbytes is None else int(nbytes)
    if nbytes is not None:
        from ..hostmem import bound_freed_memory

        bound_freed_memory()


def host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def default_budget(placement=None) -> int:
    """Half of what the placement's devices can hold (CPU: half of the host's available memory)."""
    import jax

    devs = list(placement.devices) if placement is not None and placement.sharded else [jax.devices()[0]]
    if devs[0].platform == "cpu":
        return host_available() // 2
    total = 0
    for d in devs:
        try:
            total += int((d.memory_stats() or {}).get("bytes_limit", 0))
        except Exception:  # noqa: BLE001 - backends without memory_stats count as unknown (0)
            pass
    return total // 2 if total else host_available() // 2


def budget_set() -> bool:
    """Whether the process runs under an explicit budget (``--max_memory``): memory before speed, also in the
    calibration (:class:`qsens.calibrate.TuneStream`)."""
    return _budget[0] is not None


def budget(placement=None) -> int:
    return _budget[0] if _budget[0] is not None else default_budget(placement)


def carry_bytes_per_image(graph, keep=()) -> int:
    """The largest live set over the graph's op boundaries, in bytes per image (static shapes, float32)."""
    last = graph.last_use
    keep = set(keep)
    batch = max(1, int(graph.batch))
    live: dict[str, int] = {}  # the Input ops make the network inputs
    peak = 0
    for i, op in enumerate(graph.ops):
        for t in op.outputs:
            live[t] = int(np.prod(graph.tensor_shape(t))) * 4
        for t in list(live):
            if last.get(t, -1) <= i and t not in keep:
                del live[t]
        peak = max(peak, sum(live.values()))
    return peak // batch


#: the most images per device one executable call of a search takes when the planner picks the chunk
MAX_SEARCH_CHUNK = 32


def search_chunk(n_images: int, requested: int | None = None, placement=None) -> int:
    """Images per device in one executable call of a search (the :class:`~qsens.search.problem.Problem`'s chunk).

    ``requested`` (``--batch``) wins.  Under ``--max_memory`` (memory before speed): the engine's default chunk
    (10), so one op's temporaries stay small and the planner caches and recomputes in small steps.  Otherwise the
    images in as few equal chunks of at most :data:`MAX_SEARCH_CHUNK` as possible (30 images: one chunk of 30;
    100: four of 25; 10 or fewer: the default's).  Why: the search's per-op executables keep more of the cores busy
    with more images per call (Lite0 demo job on the 2-core CPU, interleaved runs: search compute 19.7 s at 10
    images, 17.7 s at 15, 16.7 s at 30; cores 1.60 -> 1.73; peak RSS 0.8 -> 1.45 GB), and a GPU launches a third
    as many kernels.  A function of the command only (never of free memory), so a command gives the same files on
    every machine of a kind.  The batch can change the order XLA sums a convolution in, so losses can differ in
    the last float32 bits between chunk sizes on small shapes (tests/test_search.py); on Lite0 the search's files
    are byte-identical at 10, 15 and 30."""
    from ..engine import DEFAULT_CHUNK

    if requested:
        return int(requested)
    if budget_set():
        return DEFAULT_CHUNK
    ndev = placement.n if placement is not None else 1
    per_dev = -(-max(1, n_images) // ndev)
    if per_dev <= DEFAULT_CHUNK:
        return DEFAULT_CHUNK
    k = -(-per_dev // MAX_SEARCH_CHUNK)
    return -(-per_dev // k)


def resident_chunks(problem) -> int:
    """How many of ``problem``'s chunks keep their prefix cached (the first ones); the rest are recomputed."""
    per_chunk = carry_bytes_per_image(problem.graph, problem.keep) * problem.chunk
    if per_chunk <= 0:
        return len(problem.chunks)
    return int(min(len(problem.chunks), budget(problem.placement) // per_chunk))
