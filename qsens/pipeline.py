"""From files to model inputs: dataset selection + preprocessing bound to a converted model."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from .data.dataset import file_kind, load_npz_sample
from .data.preprocess import PRESETS, Preprocess, load_batch
from .errors import DatasetError
from .onnx.ir import Graph


def preset_for_model(model_path: str) -> str | None:
    """The preprocessing preset whose name is the model file's stem (zoo models), if any."""
    stem = os.path.splitext(os.path.basename(str(model_path)))[0]
    for name in PRESETS:
        if stem == name or stem.startswith(name + "_"):
            return name
    return None


def make_preprocess(graph: Graph, *, preset: str | None = None, resize_dims=None, keep_aspect_ratio=None,
                    pixel_format=None, channel_format=None, mean=None, scale=None, keep_ratio_mode=None,
                    pad_type=None, pad_value=None) -> Preprocess:
    """TPU-MLIR-style preprocessing for ``graph``'s first input: a preset, overridden by explicit flags.

    Without a preset the defaults are TPU-MLIR's (bgr, nchw, mean 0, scale 1, resize to the net size;
    with ``keep_aspect_ratio``: letterbox, centred, pad value 0).  ``None`` = not given.
    """
    shp = graph.input_shapes[0]
    if len(shp) != 4:
        raise DatasetError(f"image datasets need a 4-D model input, '{graph.inputs[0]}' is {list(shp)}; use .npy/.npz samples")
    cf = channel_format or (PRESETS[preset].channel_format if preset else "nchw")
    net_hw = (shp[2], shp[3]) if cf == "nchw" else (shp[1], shp[2])
    if preset:
        if preset not in PRESETS:
            raise DatasetError(f"unknown --preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        pp = PRESETS[preset]
        if pp.net_hw != net_hw:
            ratio = None if pp.resize_dims is None else pp.resize_dims[0] / pp.net_hw[0]
            rd = None if ratio is None else (int(net_hw[0] * ratio), int(net_hw[1] * ratio))
            pp = replace(pp, net_hw=net_hw, resize_dims=rd)
    else:
        pp = Preprocess(resize_dims=None, keep_aspect_ratio=False, net_hw=net_hw)
    kw = {}
    for k, v in dict(resize_dims=resize_dims, keep_aspect_ratio=keep_aspect_ratio, pixel_format=pixel_format,
                     channel_format=channel_format, mean=mean, scale=scale, keep_ratio_mode=keep_ratio_mode,
                     pad_type=pad_type, pad_value=pad_value).items():
        if v is not None:
            kw[k] = tuple(v) if isinstance(v, list) else v
    try:
        return replace(pp, **kw) if kw else pp
    except ValueError as e:  # an inconsistent flag combination (e.g. rgba + letterbox, too few --mean values)
        raise DatasetError(f"preprocessing flags: {e}") from None


def iter_inputs(files: Sequence[str], graph: Graph, pp: Preprocess | None, batch: int,
                compact: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Yield input dicts of up to ``batch`` samples (one sample = one file = one deployment-batch-1 input);
    ``compact``: 8-bit images as :class:`~qsens.data.preprocess.PixelBatch` (same values, a quarter of the memory)."""
    files = list(files)
    if not files:
        raise DatasetError("no samples to load")
    kind = file_kind(files)
    for s in range(0, len(files), batch):
        chunk = files[s : s + batch]
        if kind == "image":
            if len(graph.inputs) != 1:
                raise DatasetError(f"the model has {len(graph.inputs)} inputs; image datasets feed one input: use .npz samples")
            assert pp is not None
            yield {graph.inputs[0]: load_batch(chunk, pp, compact)}
        else:
            shapes = [(1,) + tuple(s_[1:]) for s_ in graph.input_shapes]
            arrs: dict[str, list[np.ndarray]] = {n: [] for n in graph.inputs}
            for f in chunk:
                if kind == "npz":
                    d = load_npz_sample(f, graph.inputs, shapes)
                else:
                    if len(graph.inputs) != 1:
                        raise DatasetError(f"{f}: .npy samples feed one input, the model has {len(graph.inputs)}; use .npz")
                    try:
                        a = np.load(f, allow_pickle=False)
                    except Exception as e:  # noqa: BLE001
                        raise DatasetError(f"{f}: cannot read as .npy ({type(e).__name__}); re-save with numpy.save") from None
                    d = {graph.inputs[0]: a}
                for n, shp in zip(graph.inputs, shapes):
                    a = np.asarray(d[n], np.float32)
                    if a.shape == tuple(shp[1:]):
                        a = a[None]
                    if a.shape != tuple(shp):
                        raise DatasetError(f"{f}: input '{n}' has shape {list(a.shape)}, expected {list(shp)}")
                    arrs[n].append(a)
            yield {n: np.concatenate(v, 0) for n, v in arrs.items()}


def load_inputs(files: Sequence[str], graph: Graph, pp: Preprocess | None, compact: bool = False) -> dict[str, np.ndarray]:
    """All samples as one input dict (N, ...); ``compact``: see :func:`iter_inputs`."""
    parts = list(iter_inputs(files, graph, pp, batch=max(1, len(files)), compact=compact))
    return parts[0]
