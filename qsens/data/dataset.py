"""Calibration / inference sample selection, exactly like TPU-MLIR's ``DataSelector``.

``--dataset DIR``: every file under DIR (recursively, ``pathlib.Path(DIR).glob('**/*')``) whose extension
(case-insensitive) is jpg/jpeg/png/bmp/jfif, npy or npz; ``sorted()`` by path string; then
``random.seed(seed); random.shuffle(list)`` (seed 1684 = TPU-MLIR's); then the first ``input_num``
(0 = all). Because the search evaluates a prefix of the same list, the inference samples are a subset
of the calibration samples, as in TPU-MLIR.  Sub-folders are searched too, so an ImageNet train-style folder
(one sub-folder per synset, ``n01440764/...``) works as is: its files are sorted by path (the same order as
by path relative to DIR), then shuffled.

``--data_list FILE``: one entry per line (stripped; blank lines skipped), first ``input_num`` if
``0 < input_num < len``; no shuffle. Multi-input entries are comma-separated (``a.jpg,b.jpg``).

All entries must be one kind (image, npy or npz).
"""

from __future__ import annotations

import logging
import pathlib
import random
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from qsens.errors import DatasetError

__all__ = [
    "IMAGE_EXTS",
    "file_kind",
    "load_npz_sample",
    "select_files",
]

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "bmp", "png", "jpeg", "jfif")
_KINDS = ("image", "npy", "npz")


def _ext(name: str) -> str:
    return name.lower().split(".")[-1]


def _kind_of(name: str) -> str | None:
    e = _ext(name)
    if e == "npz":
        return "npz"
    if e == "npy":
        return "npy"
    if e in IMAGE_EXTS:
        return "image"
    return None


def file_kind(entries: Sequence[str], source: str = "data list") -> str:
    """``'image'``, ``'npy'`` or ``'npz'`` for a list of entries; :class:`DatasetError` if mixed/unknown.

    An entry may hold several comma-separated inputs (``a.npy,b.npy``); an npz entry is one file.
    """
    kinds: dict[str, str] = {}
    for entry in entries:
        if _kind_of(entry) == "npz":
            kinds.setdefault("npz", entry)
            continue
        for part in (s.strip() for s in entry.split(",")):
            k = _kind_of(part)
            if k is None or k == "npz":
                raise DatasetError(
                    f"{source}: {part!r} is not an image ({'/'.join(IMAGE_EXTS)}), .npy or .npz file; "
                    f"remove it or fix the extension"
                )
            kinds.setdefault(k, entry)
    if len(kinds) > 1:
        (k1, e1), (k2, e2) = list(kinds.items())[:2]
        raise DatasetError(
            f"{source}: mixes {k1} files (e.g. {e1}) and {k2} files (e.g. {e2}); "
            f"use one kind only (images, .npy or .npz)"
        )
    if not kinds:
        raise DatasetError(f"{source}: no inputs")
    return next(iter(kinds))


def select_files(
    dataset: str | None = None,
    data_list: str | None = None,
    input_num: int = 0,
    seed: int = 1684,
) -> list[str]:
    """The ordered sample list TPU-MLIR's ``DataSelector(dataset, input_num, data_list)`` would use.

    ``data_list`` wins over ``dataset``. ``input_num`` larger than what is available uses all files and
    warns. Raises :class:`DatasetError` for a missing/empty dataset or mixed file kinds.
    """
    if input_num < 0:
        raise DatasetError(f"input_num must be >= 0 (0 = all), got {input_num}")
    if data_list:
        source = str(data_list)
        try:
            with open(data_list, encoding="utf-8") as f:
                entries = [line.strip() for line in f.readlines()]
        except FileNotFoundError as e:
            raise DatasetError(f"{data_list}: data list file not found; check --data_list") from e
        except (IsADirectoryError, UnicodeDecodeError) as e:
            raise DatasetError(f"{data_list}: not a text file with one sample path per line") from e
        entries = [e for e in entries if e]
        if not entries:
            raise DatasetError(f"{data_list}: data list is empty; add one sample path per line")
        if input_num > len(entries):
            _warn_too_few(input_num, len(entries), source)
        if 0 < input_num < len(entries):
            entries = entries[:input_num]
    elif dataset:
        source = str(dataset)
        root = pathlib.Path(dataset)
        if not root.exists():
            raise DatasetError(f"{dataset}: dataset directory not found; check --dataset")
        if not root.is_dir():
            raise DatasetError(f"{dataset}: --dataset must be a directory of images/.npy/.npz files")
        full = [str(p) for p in root.glob("**/*") if _kind_of(str(p)) is not None and p.is_file()]
        if not full:
            raise DatasetError(
                f"{dataset}: no image ({'/'.join(IMAGE_EXTS)}), .npy or .npz files found (searched "
                f"recursively); point --dataset at your calibration images"
            )
        full = sorted(full)
        random.seed(seed)
        random.shuffle(full)
        if input_num > len(full):
            _warn_too_few(input_num, len(full), source)
        n = len(full) if input_num == 0 or input_num > len(full) else input_num
        entries = full[:n]
    else:
        raise DatasetError("no samples: pass --dataset DIR or --data_list FILE")
    file_kind(entries, source)
    return entries


def _warn_too_few(asked: int, found: int, source: str) -> None:
    msg = f"{source}: asked for {asked} samples but only {found} found; using all {found}"
    log.warning(msg)
    warnings.warn(msg, stacklevel=3)


def load_npz_sample(
    path: str,
    input_names: Sequence[str],
    input_shapes: Sequence[Sequence[int]] | Mapping[str, Sequence[int]],
) -> dict[str, np.ndarray]:
    """Load one ``.npz`` sample as ``{input_name: array}``, checking keys and shapes.

    Single-input models accept an npz with exactly one array whatever its key (TPU-MLIR takes
    ``x.files[0]``). Multi-input npz files are indexed by input name. An array may have the model's
    input shape, or leading dimension 1 with the rest equal (one sample of a batched input).
    Raises :class:`DatasetError` listing expected vs found keys / shapes.
    """
    names = list(input_names)
    if isinstance(input_shapes, Mapping):
        shapes = [tuple(int(d) for d in input_shapes[n]) for n in names]
    else:
        shapes = [tuple(int(d) for d in s) for s in input_shapes]
    if len(shapes) != len(names):
        raise ValueError(f"{len(names)} input names but {len(shapes)} input shapes")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: npz file not found") from e
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise DatasetError(
            f"{path}: cannot read as .npz ({type(e).__name__}: {e}); re-save with numpy.savez"
        ) from e

    found = ", ".join(f"{k}{list(v.shape)}" for k, v in arrays.items()) or "nothing"
    expected = ", ".join(f"{n}{list(s)}" for n, s in zip(names, shapes))
    if len(names) == 1 and len(arrays) == 1:
        picked = {names[0]: next(iter(arrays.values()))}
    else:
        missing = [n for n in names if n not in arrays]
        if missing:
            raise DatasetError(
                f"{path}: npz keys do not match the model inputs; expected {expected}, found {found}; "
                f"save the arrays under the model's input names"
            )
        picked = {n: arrays[n] for n in names}
    for (n, a), s in zip(picked.items(), shapes):
        ok = a.shape == s or (len(s) >= 1 and a.shape == (1, *s[1:]))
        if not ok:
            raise DatasetError(
                f"{path}: input {n!r} has shape {list(a.shape)}, expected {list(s)}; "
                f"expected {expected}, found {found}"
            )
    return picked
