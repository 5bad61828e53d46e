"""Small helpers shared by the op modules."""

from __future__ import annotations

import numpy as np


def is_numpy(xp) -> bool:
    return xp is np


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def ints(v) -> tuple[int, ...]:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def onnx_dtype_to_np(t: int):
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(int(t)))
