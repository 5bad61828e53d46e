"""Image preprocessing, numerically identical to TPU-MLIR's ``utils/preprocess.py``.

For one image (``preprocess.run`` / ``__load_image_and_resize``):

1. decode with OpenCV: ``cv2.imread(path, IMREAD_COLOR)`` (BGR uint8) or ``IMREAD_GRAYSCALE`` for gray;
2. resize the **uint8** image with ``cv2.resize`` (``INTER_LINEAR``) to ``resize_dims`` (H, W):
   stretch, or with ``keep_aspect_ratio`` TPU-MLIR's ``short_side_scale_resize``: scale
   ``s = max(W/iw, H/ih)``, size ``int(iw*s)`` x ``int(ih*s)`` (at least W x H), then a centre crop of
   ``resize_dims`` at offset ``(new - H)//2``;
3. if ``resize_dims != net_hw``: centre crop to ``net_hw`` at ``h//2 - crop_h//2`` (TPU-MLIR's crop);
4. to float32; ``rgb`` reverses the channel order (BGR -> RGB); gray uses the first mean/scale value;
5. ``(x - mean) * scale`` in float32, per channel;
6. CHW (``nchw``) or HWC (``nhwc``).

Channel permutation commutes with resizing and cropping, so this equals "decode -> pixel format ->
resize -> crop -> normalise". As in TPU-MLIR's ``config()``, ``resize_dims`` smaller than the net
size is raised to it per axis. (TPU-MLIR's default ``keep_ratio_mode`` is letterbox; qsens implements
the ``short_side_scale`` mode, which is what the EfficientNet-Lite "resize the short side to
size/0.875, centre crop" recipe needs.)
"""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from qsens.errors import DatasetError

__all__ = [
    "PRESETS",
    "ParseError",
    "Preprocess",
    "iter_batches",
    "load_batch",
    "load_image",
    "parse_dims",
    "parse_floats",
    "parse_input_shapes",
]


class ParseError(ValueError, argparse.ArgumentTypeError):
    """A malformed CLI string (usable as an argparse ``type=``: argparse shows this message)."""


@dataclass(frozen=True)
class Preprocess:
    """Preprocessing of one model input (the attributes model_transform puts on the Input op)."""

    resize_dims: tuple[int, int] | None
    keep_aspect_ratio: bool
    net_hw: tuple[int, int]
    pixel_format: str = "bgr"
    channel_format: str = "nchw"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    scale: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        net = tuple(int(d) for d in self.net_hw)
        if len(net) != 2 or min(net) <= 0:
            raise ValueError(f"net_hw must be two positive ints (H, W), got {self.net_hw!r}")
        object.__setattr__(self, "net_hw", net)
        if self.resize_dims is not None:
            rd = tuple(int(d) for d in self.resize_dims)
            if len(rd) != 2 or min(rd) <= 0:
                raise ValueError(f"resize_dims must be two positive ints (H, W), got {self.resize_dims!r}")
            object.__setattr__(self, "resize_dims", rd)
        if self.pixel_format not in ("rgb", "bgr", "gray"):
            raise ValueError(f"pixel_format must be 'rgb', 'bgr' or 'gray', got {self.pixel_format!r}")
        if self.channel_format not in ("nchw", "nhwc"):
            raise ValueError(f"channel_format must be 'nchw' or 'nhwc', got {self.channel_format!r}")
        c = self.channels
        for label in ("mean", "scale"):
            v = tuple(float(x) for x in getattr(self, label))
            if len(v) == 1:
                v = v * c
            if len(v) < c:
                raise ValueError(f"{label} needs {c} values for pixel_format {self.pixel_format!r}, got {v}")
            object.__setattr__(self, label, v)

    @property
    def channels(self) -> int:
        return 1 if self.pixel_format == "gray" else 3

    @property
    def effective_resize(self) -> tuple[int, int]:
        """``resize_dims`` (default: net size), raised to the net size per axis (TPU-MLIR ``config``)."""
        if self.resize_dims is None:
            return self.net_hw
        return (max(self.resize_dims[0], self.net_hw[0]), max(self.resize_dims[1], self.net_hw[1]))

    def with_net_hw(self, net_hw: tuple[int, int]) -> Preprocess:
        """Same preprocessing for another net size (e.g. MTCNN P-Net's dynamic input)."""
        from dataclasses import replace

        return replace(self, net_hw=tuple(net_hw))

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        h, w = self.net_hw
        c = self.channels
        return (batch, c, h, w) if self.channel_format == "nchw" else (batch, h, w, c)


def _lite(size: int) -> Preprocess:
    resize = int(size / 0.875)
    return Preprocess(
        resize_dims=(resize, resize),
        keep_aspect_ratio=True,
        net_hw=(size, size),
        pixel_format="rgb",
        channel_format="nchw",
        mean=(127.0,) * 3,
        scale=(1 / 128,) * 3,
    )


def _mtcnn(size: int) -> Preprocess:
    return Preprocess(
        resize_dims=None,
        keep_aspect_ratio=False,
        net_hw=(size, size),
        pixel_format="rgb",
        channel_format="nchw",
        mean=(127.5,) * 3,
        scale=(1 / 128,) * 3,
    )


#: Model presets. EfficientNet-Lite: short side to size/0.875 (256 for 224, 297 for 260), centre crop,
#: (x-127)/128, RGB. MTCNN: (x-127.5)/128, RGB, 12/24/48; P-Net is fully convolutional (dynamic input):
#: use ``PRESETS['mtcnn_pnet'].with_net_hw((H, W))`` for the size you calibrate at.
PRESETS: dict[str, Preprocess] = {
    "efficientnet_lite0": _lite(224),
    "efficientnet_lite2": _lite(260),
    "mtcnn_pnet": _mtcnn(12),
    "mtcnn_rnet": _mtcnn(24),
    "mtcnn_onet": _mtcnn(48),
}


# ------------------------------------------------------------------------------------------------
# Image pipeline
# ------------------------------------------------------------------------------------------------
def _imread(path: str, gray: bool) -> np.ndarray:
    p = str(path).rstrip()
    if not os.path.isfile(p):
        raise DatasetError(f"{p}: image file not found")
    img = cv2.imread(p, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise DatasetError(f"{p}: cannot decode image (corrupt or unsupported format); remove or replace it")
    return img


def short_side_scale_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """TPU-MLIR ``ImageResizeTool.short_side_scale_resize`` (OpenCV path)."""
    ih, iw = image.shape[:2]
    s = max(float(w) / iw, float(h) / ih)
    rw = int(iw * s) if iw * s >= w else w
    rh = int(ih * s) if ih * s >= h else h
    resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    sh = (rh - h) // 2 if rh - h > 0 else 0
    sw = (rw - w) // 2 if rw - w > 0 else 0
    return resized[sh : sh + h, sw : sw + w]


def center_crop(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """TPU-MLIR ``__center_crop`` on an HW[C] image: start ``H//2 - h//2``."""
    ih, iw = image.shape[:2]
    sh = ih // 2 - h // 2
    sw = iw // 2 - w // 2
    return image[sh : sh + h, sw : sw + w]


def load_image(path: str, pp: Preprocess) -> np.ndarray:
    """Decode and preprocess one image -> float32 ``(C, H, W)`` (nchw) or ``(H, W, C)`` (nhwc).

    Raises :class:`DatasetError` naming the file if it is missing or cannot be decoded.
    """
    gray = pp.pixel_format == "gray"
    img = _imread(path, gray)
    rh, rw = pp.effective_resize
    if pp.keep_aspect_ratio:
        img = short_side_scale_resize(img, rh, rw)
    else:
        img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
    if img.ndim == 2:
        img = img[:, :, None]
    if (rh, rw) != pp.net_hw:
        img = center_crop(img, *pp.net_hw)
    x = img.astype(np.float32)
    c = pp.channels
    if pp.pixel_format == "rgb":
        x = x[:, :, ::-1]
    mean = np.asarray(pp.mean[:c], dtype=np.float32)
    scale = np.asarray(pp.scale[:c], dtype=np.float32)
    x = (x - mean) * scale
    if pp.channel_format == "nchw":
        x = np.transpose(x, (2, 0, 1))
    return np.ascontiguousarray(x, dtype=np.float32)


def load_batch(files: Sequence[str], pp: Preprocess) -> np.ndarray:
    """Preprocess ``files`` into one float32 array ``(N, C, H, W)`` (``(N, H, W, C)`` for nhwc)."""
    if len(files) == 0:
        raise DatasetError("no image files to load")
    out = np.empty((len(files), *pp.input_shape(1)[1:]), dtype=np.float32)
    for i, f in enumerate(files):
        out[i] = load_image(f, pp)
    return out


def iter_batches(
    files: Sequence[str], pp: Preprocess, batch_size: int, *, pad_last: bool = False
) -> Iterator[np.ndarray]:
    """Yield ``load_batch`` of consecutive chunks of ``batch_size`` files (memory independent of N).

    The last batch is shorter unless ``pad_last``, which repeats the last file until the batch is full
    (what TPU-MLIR does when the sample count is not a multiple of the model batch).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    files = list(files)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        if pad_last and len(chunk) < batch_size:
            chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
        yield load_batch(chunk, pp)


# ------------------------------------------------------------------------------------------------
# CLI string parsing
# ------------------------------------------------------------------------------------------------
def parse_floats(s: str) -> tuple[float, ...]:
    """``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)`` (TPU-MLIR ``--mean`` / ``--scale`` syntax)."""
    parts = [p.strip() for p in str(s).strip().strip("[]").split(",")]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError as e:
        raise ParseError(f"expected comma-separated numbers like '0.5,1,2', got {s!r}") from e
    if not vals or any(v != v for v in vals):
        raise ParseError(f"expected comma-separated numbers like '0.5,1,2', got {s!r}")
    return vals


def parse_dims(s: str) -> tuple[int, ...]:
    """``"256,256"`` -> ``(256, 256)`` (TPU-MLIR ``--resize_dims`` syntax: H,W)."""
    parts = [p.strip() for p in str(s).strip().strip("[]").split(",")]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError as e:
        raise ParseError(f"expected comma-separated positive integers like '256,256', got {s!r}") from e
    if not vals or min(vals) <= 0:
        raise ParseError(f"expected comma-separated positive integers like '256,256', got {s!r}")
    return vals


def parse_input_shapes(s: str) -> list[list[int]]:
    """TPU-MLIR ``--input_shapes``: ``"[[1,3,224,224]]"`` (one list per input) or ``"[1,3,224,224]"``."""
    try:
        v = ast.literal_eval(str(s).strip())
    except (ValueError, SyntaxError) as e:
        raise ParseError(f"expected a list of shapes like '[[1,3,224,224]]', got {s!r}") from e
    if isinstance(v, tuple):
        v = list(v)
    if not isinstance(v, list):
        raise ParseError(f"expected a list of shapes like '[[1,3,224,224]]', got {s!r}")
    if len(v) == 0:
        return []
    if all(isinstance(d, int) and not isinstance(d, bool) for d in v):
        v = [v]
    shapes = []
    for shape in v:
        if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise ParseError(
                f"expected a list of shapes of positive integers like '[[1,3,224,224],[1,10]]', got {s!r}"
            )
        shapes.append([int(d) for d in shape])
    return shapes
