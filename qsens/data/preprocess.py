"""Image preprocessing, numerically identical to TPU-MLIR 1.23's ``utils/preprocess.py``.

What ``run_calibration`` / ``run_sensitive_layer`` / ``model_transform --test_input`` do with one image
(``preprocess.load_config`` from the Input op, then ``run`` -> ``__load_image_and_resize``):

1. decode with OpenCV: ``cv2.imread(path, IMREAD_COLOR)`` (BGR uint8, EXIF orientation applied), or
   ``IMREAD_GRAYSCALE`` for ``gray``; ``rgba`` reads ``IMREAD_UNCHANGED`` (BGRA -> RGBA) and falls back to
   ``PIL.Image.open(path).convert('RGBA')`` when the file has no 4 channels;
2. resize the **integer** image with ``cv2.resize`` (default ``INTER_LINEAR``) to ``resize_dims`` (H, W,
   default the net size):

   * no ``keep_aspect_ratio``: stretch to W x H;
   * ``keep_aspect_ratio`` + ``keep_ratio_mode='letterbox'`` (TPU-MLIR's default): ``s = min(W/iw, H/ih)``
     (Python floats), resize to ``int(iw*s)`` x ``int(ih*s)`` (truncation: a side can come out one pixel
     short, e.g. 77 px wide to 40 gives 39), paste into an H x W canvas filled with ``pad_value`` (in the
     image dtype, i.e. modulo 256 for uint8 as numpy 1.24's ``np.full`` does) at ``((H-rh)//2, (W-rw)//2)``
     for ``pad_type='center'`` or at (0, 0) (pad bottom/right) for ``'normal'``; only 1- or 3-channel
     images (TPU-MLIR raises for ``rgba``);
   * ``keep_aspect_ratio`` + ``keep_ratio_mode='short_side_scale'``: ``s = max(W/iw, H/ih)``, size
     ``int(iw*s)`` x ``int(ih*s)`` (each at least W x H), centre crop at ``(new - H)//2``;
3. HWC -> CHW, batch;
4. if ``resize_dims != net size``: centre crop to the net size at ``h//2 - crop_h//2`` (a different formula
   from step 2's crop: they differ for odd sizes);
5. to float32; ``rgb`` reverses the channel order (BGR -> RGB); ``gray`` uses the first mean/scale value;
6. ``(x - mean) * scale`` in float32 (mean and scale are float32), per channel;
7. NCHW, or NHWC for ``channel_format='nhwc'``.

Channel permutation and the CHW transpose commute with resizing, padding and cropping, so qsens does
"decode -> resize -> crop (HWC, integer) -> float32 -> channel order -> normalise -> layout", which is the same
array bit for bit. ``tests/test_preprocess_tpu_mlir.py`` checks it against arrays made by the real TPU-MLIR.

Not reproduced: ``.yuv`` inputs / ``--yuv_type`` (qsens does not read raw YUV files), ``fuse_preprocess``
(deploy-time, integer input), the Bayer pixel formats, and ``debug_cmd=use_pil_resize`` (the calibration
tools build their ``preprocess()`` without a debug_cmd, so it never reaches calibration).

One qsens extension: ``resize_dims`` smaller than the net size is raised to it per axis (TPU-MLIR does that
only with ``fuse_preprocess``; otherwise its centre crop returns a wrongly shaped tensor).
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
    "KEEP_RATIO_MODES",
    "PAD_TYPES",
    "PIXEL_FORMATS",
    "PRESETS",
    "ParseError",
    "Preprocess",
    "iter_batches",
    "letterbox_resize",
    "load_batch",
    "load_image",
    "parse_dims",
    "parse_floats",
    "parse_input_shapes",
    "short_side_scale_resize",
]

#: TPU-MLIR ``--keep_ratio_mode`` choices; the first is its default.
KEEP_RATIO_MODES = ("letterbox", "short_side_scale")
#: TPU-MLIR ``--pad_type`` choices; the first is its default.
PAD_TYPES = ("center", "normal")
#: The ``--pixel_format`` values qsens preprocesses (TPU-MLIR's, less the Bayer raw formats).
PIXEL_FORMATS = ("bgr", "rgb", "gray", "rgba")


class ParseError(ValueError, argparse.ArgumentTypeError):
    """A malformed CLI string (usable as an argparse ``type=``: argparse shows this message)."""


@dataclass(frozen=True)
class Preprocess:
    """Preprocessing of one model input (the attributes model_transform puts on the Input op).

    ``keep_ratio_mode``, ``pad_type`` and ``pad_value`` have TPU-MLIR's defaults (letterbox, center, 0);
    the mode matters only with ``keep_aspect_ratio``, the padding only in letterbox mode.
    """

    resize_dims: tuple[int, int] | None
    keep_aspect_ratio: bool
    net_hw: tuple[int, int]
    pixel_format: str = "bgr"
    channel_format: str = "nchw"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    scale: tuple[float, ...] = (1.0, 1.0, 1.0)
    keep_ratio_mode: str = "letterbox"
    pad_type: str = "center"
    pad_value: int = 0

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
        object.__setattr__(self, "keep_aspect_ratio", bool(self.keep_aspect_ratio))
        if self.pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {', '.join(PIXEL_FORMATS)}, got {self.pixel_format!r}")
        if self.channel_format not in ("nchw", "nhwc"):
            raise ValueError(f"channel_format must be 'nchw' or 'nhwc', got {self.channel_format!r}")
        if self.keep_ratio_mode not in KEEP_RATIO_MODES:
            raise ValueError(f"keep_ratio_mode must be 'letterbox' or 'short_side_scale', got {self.keep_ratio_mode!r}")
        if self.pad_type not in PAD_TYPES:
            raise ValueError(f"pad_type must be 'center' or 'normal', got {self.pad_type!r}")
        if isinstance(self.pad_value, bool) or int(self.pad_value) != self.pad_value:
            raise ValueError(f"pad_value must be an integer, got {self.pad_value!r}")
        object.__setattr__(self, "pad_value", int(self.pad_value))
        if self.pixel_format == "rgba" and self.keep_aspect_ratio and self.keep_ratio_mode == "letterbox":
            raise ValueError("keep_aspect_ratio with keep_ratio_mode 'letterbox' supports 1- or 3-channel images "
                             "only (TPU-MLIR's letterbox_resize raises for rgba); use 'short_side_scale'")
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
        return {"gray": 1, "rgba": 4}.get(self.pixel_format, 3)

    @property
    def effective_resize(self) -> tuple[int, int]:
        """``resize_dims`` (default: net size), raised to the net size per axis (a qsens extension)."""
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


#: Model presets, each equal to a TPU-MLIR flag set.  EfficientNet-Lite: ``--resize_dims 256,256
#: --keep_aspect_ratio --pixel_format rgb --mean 127,127,127 --scale 0.0078125,0.0078125,0.0078125`` (297
#: for Lite2's 260), i.e. TPU-MLIR's default letterbox (long side to 256, centred zero padding) then the
#: 224 centre crop.  (The TF recipe "short side to 256, centre crop" is ``keep_ratio_mode='short_side_scale'``;
#: both agree on square images.)  MTCNN: (x-127.5)/128, RGB, 12/24/48, stretched; P-Net is fully
#: convolutional (dynamic input): use ``PRESETS['mtcnn_pnet'].with_net_hw((H, W))`` for the size you
#: calibrate at.
PRESETS: dict[str, Preprocess] = {
    "efficientnet_lite0": _lite(224),
    "efficientnet_lite2": _lite(260),
    "mtcnn_pnet": _mtcnn(12),
    "mtcnn_rnet": _mtcnn(24),
    "mtcnn_onet": _mtcnn(48),
    # qsens.mnist's network: 28x28 8-bit gray, pixel/255 (--pixel_format gray --mean 0 --scale 0.0039215686)
    "mnist_mbv2": Preprocess(resize_dims=None, keep_aspect_ratio=False, net_hw=(28, 28), pixel_format="gray",
                             channel_format="nchw", mean=(0.0,), scale=(1 / 255,)),
}


# ------------------------------------------------------------------------------------------------
# Image pipeline
# ------------------------------------------------------------------------------------------------
def _imread(path: str, pixel_format: str) -> np.ndarray:
    p = str(path).rstrip()
    if not os.path.isfile(p):
        raise DatasetError(f"{p}: image file not found")
    bad = DatasetError(f"{p}: cannot decode image (corrupt or unsupported format); remove or replace it")
    if pixel_format == "rgba":
        img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            raise bad
        if img.ndim == 3 and img.shape[2] == 4:
            return img[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
        from PIL import Image  # TPU-MLIR's fallback for files without an alpha channel

        try:
            with Image.open(p) as im:
                return np.array(im.convert("RGBA"))
        except Exception as e:  # noqa: BLE001
            raise bad from e
    img = cv2.imread(p, cv2.IMREAD_GRAYSCALE if pixel_format == "gray" else cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise bad
    return img


def _resize(image: np.ndarray, w: int, h: int) -> np.ndarray:
    if w <= 0 or h <= 0:
        raise ValueError(f"a {image.shape[1]}x{image.shape[0]} image scales to {w}x{h}: aspect ratio too extreme")
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def letterbox_resize(image: np.ndarray, h: int, w: int, pad_value: int = 0, pad_type: str = "center") -> np.ndarray:
    """TPU-MLIR ``ImageResizeTool.letterbox_resize`` (OpenCV path) on an HW or HWC (3-channel) image."""
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"letterbox needs a 1- or 3-channel image, got shape {image.shape}")
    ih, iw = image.shape[:2]
    s = min(float(w) / iw, float(h) / ih)
    rw, rh = int(iw * s), int(ih * s)
    resized = _resize(image, rw, rh)
    ph, pw = ((h - rh) // 2, (w - rw) // 2) if pad_type == "center" else (0, 0)
    # np.full(..., pad_value, dtype=uint8) wraps modulo 256 under TPU-MLIR's numpy 1.24 (newer numpy raises)
    fill = np.array(pad_value).astype(resized.dtype) if np.issubdtype(resized.dtype, np.integer) else pad_value
    out = np.full((h, w) + resized.shape[2:], fill, dtype=resized.dtype)
    out[ph : ph + rh, pw : pw + rw] = resized
    return out


def short_side_scale_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """TPU-MLIR ``ImageResizeTool.short_side_scale_resize`` (OpenCV path)."""
    ih, iw = image.shape[:2]
    s = max(float(w) / iw, float(h) / ih)
    rw = int(iw * s) if iw * s >= w else w
    rh = int(ih * s) if ih * s >= h else h
    resized = _resize(image, rw, rh)
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
    return normalize_pixels(load_pixels(path, pp), pp)


def load_pixels(path: str, pp: Preprocess) -> np.ndarray:
    """Steps 1-4 of the preprocessing (decode, resize, crop): the ``(H, W, C)`` pixels in the decoder's dtype
    (uint8 for 8-bit images), before the float conversion."""
    img = _imread(path, pp.pixel_format)
    rh, rw = pp.effective_resize
    try:
        if not pp.keep_aspect_ratio:
            img = _resize(img, rw, rh)
        elif pp.keep_ratio_mode == "letterbox":
            img = letterbox_resize(img, rh, rw, pp.pad_value, pp.pad_type)
        else:
            img = short_side_scale_resize(img, rh, rw)
    except ValueError as e:
        raise DatasetError(f"{str(path).rstrip()}: {e}") from None
    if img.ndim == 2:
        img = img[:, :, None]
    if (rh, rw) != pp.net_hw:
        img = center_crop(img, *pp.net_hw)
    return img


def normalize_pixels(img: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Steps 5-7 on ``(..., H, W, C)`` pixels (one image or a stack): float32, channel order, ``(x - mean) * scale``
    (two float32 operations, each rounded to nearest even: the same values image by image or stacked), layout."""
    x = img.astype(np.float32)
    c = pp.channels
    if pp.pixel_format == "rgb":
        x = x[..., ::-1]
    mean = np.asarray(pp.mean[:c], dtype=np.float32)
    scale = np.asarray(pp.scale[:c], dtype=np.float32)
    x = (x - mean) * scale
    if pp.channel_format == "nchw":
        x = np.moveaxis(x, -1, -3)
    return np.ascontiguousarray(x, dtype=np.float32)


class PixelBatch:
    """Images kept as their 8-bit pixels, normalized to float32 when read: a quarter of the memory of
    :func:`load_batch`'s array, with the same values (:func:`normalize_pixels` is elementwise).

    Array-like: ``shape`` / ``dtype`` / ``ndim`` / ``len`` are the float batch's; ``batch[a:b]`` is a PixelBatch of
    those rows (a view, no copy), ``np.asarray(batch)`` the float32 array.  The search keeps its inference images
    this way under a memory budget (``--max_memory``: 300 ResNet-sized images are 181 MB as float32, 45 MB here)."""

    def __init__(self, pixels: np.ndarray, pp: Preprocess):
        self.pixels, self.pp = pixels, pp
        n, h, w, c = pixels.shape
        self.shape = (n, c, h, w) if pp.channel_format == "nchw" else (n, h, w, c)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return PixelBatch(self.pixels[key], self.pp)
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        x = normalize_pixels(self.pixels, self.pp)
        return x if dtype is None else x.astype(dtype)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes


def load_batch(files: Sequence[str], pp: Preprocess, compact: bool = False) -> np.ndarray | PixelBatch:
    """Preprocess ``files`` into one float32 array ``(N, C, H, W)`` (``(N, H, W, C)`` for nhwc); ``compact``: a
    :class:`PixelBatch` of the same values when every image decodes to 8-bit pixels."""
    if len(files) == 0:
        raise DatasetError("no image files to load")
    out = np.empty((len(files), *pp.input_shape(1)[1:]), dtype=np.float32)
    pix = None  # the 8-bit pixels while every image so far has them (compact)
    for i, f in enumerate(files):
        p = load_pixels(f, pp)
        if compact and pix is None and i == 0 and p.dtype == np.uint8:
            pix = np.empty((len(files), *p.shape), np.uint8)
        if pix is not None and p.dtype == np.uint8:
            pix[i] = p
            continue
        if pix is not None:  # not 8-bit: the float array from here on, the earlier images normalized once
            out[:i] = normalize_pixels(pix[:i], pp)
            pix = None
        out[i] = normalize_pixels(p, pp)
    return out if pix is None else PixelBatch(pix, pp)


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
