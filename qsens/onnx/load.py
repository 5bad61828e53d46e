"""Loading ONNX models and resolving input shapes, with one-line errors."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ..errors import ModelError


def load_model(model_or_path) -> tuple[onnx.ModelProto, str]:
    """Return ``(ModelProto, path)``; raises :class:`ModelError` for missing/truncated/non-ONNX files."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "<in-memory model>"
    path = os.fspath(model_or_path)
    if not os.path.exists(path):
        raise ModelError(f"model file '{path}' does not exist; pass the path of an .onnx file (or run `qsens zoo`).")
    if os.path.isdir(path):
        raise ModelError(f"model path '{path}' is a directory; pass the path of an .onnx file.")
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise ValueError("empty file")
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ModelError(
            f"cannot read '{path}' as an ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'parse error'}); "
            "the file is truncated or not ONNX: re-export or re-download it."
        ) from None
    if len(model.graph.node) == 0 or not model.graph.output:
        raise ModelError(f"'{path}' parsed but holds no graph (no nodes/outputs); it is not an ONNX model or it is truncated.")
    return model, path


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def declared_shape(v: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dims as ints, or the dim_param string / None when unknown."""
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def input_dtype(v: onnx.ValueInfoProto) -> np.dtype:
    from onnx import helper

    et = v.type.tensor_type.elem_type
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(et)) if et else np.dtype(np.float32)
    if dt == np.int64:
        return np.dtype(np.int32)
    if dt == np.float64:
        return np.dtype(np.float32)
    return dt


#: What ``input_shapes`` may be: TPU-MLIR's ``--input_shapes`` (a list of shapes, one per input, or its string
#: ``"[[1,3,224,224]]"``; one input may give its shape alone, ``[1,3,224,224]``) or a dict by input name.
InputShapes = Sequence[Sequence[int]] | Sequence[int] | Mapping[str, Sequence[int]] | str


def _is_dim(d) -> bool:
    return isinstance(d, int | np.integer) and not isinstance(d, bool)


def normalize_input_shapes(
    input_shapes: InputShapes | None, names: Sequence[str], path: str
) -> list[tuple[int, ...]] | None:
    """``input_shapes`` as one shape per graph input, in the model's input order (``None`` stays ``None``).

    A dict is keyed by input name and must give every input (as TPU-MLIR's ``--input_shapes`` must); a name the
    model does not have, or a missing input, is a one-line :class:`ModelError` listing the model's inputs.
    The number of shapes, ranks and fixed dims are checked by :func:`resolve_input_shapes`.
    """
    if input_shapes is None:
        return None
    given = input_shapes
    if isinstance(given, str):
        try:
            given = ast.literal_eval(given.strip())
        except (ValueError, SyntaxError):
            raise ModelError(f"input_shapes {input_shapes!r} is not a list of shapes like [[1,3,224,224]] "
                             f"(or a dict like {{'input': [1,3,224,224]}}).") from None
    if isinstance(given, Mapping):
        unknown = [k for k in given if k not in names]
        if unknown:
            raise ModelError(f"input_shapes names input {str(unknown[0])!r}, which '{path}' does not have; "
                             f"its inputs are: {', '.join(names)}.")
        missing = [n for n in names if n not in given]
        if missing:
            raise ModelError(f"input_shapes gives no shape for input {missing[0]!r} of '{path}'; give one for "
                             f"each input: {', '.join(names)}.")
        given = [given[n] for n in names]
    if isinstance(given, np.ndarray):
        given = given.tolist()
    if not isinstance(given, Sequence) or isinstance(given, str | bytes):
        raise ModelError(f"input_shapes {input_shapes!r} is not a list of shapes like [[1,3,224,224]] "
                         f"(or a dict like {{'input': [1,3,224,224]}}).")
    if len(given) and all(_is_dim(d) for d in given):  # one shape alone: [1,3,224,224]
        given = [given]
    shapes = []
    for s in given:
        s = s.tolist() if isinstance(s, np.ndarray) else s
        if not isinstance(s, Sequence) or isinstance(s, str | bytes) or not all(_is_dim(d) and d >= 0 for d in s):
            raise ModelError(f"input_shapes has {s!r} where a shape of non-negative integers like [1,3,224,224] "
                             f"belongs; '{path}' has inputs {', '.join(names)}.")
        shapes.append(tuple(int(d) for d in s))
    return shapes


def resolve_input_shapes(model: onnx.ModelProto, input_shapes: InputShapes | None, path: str) -> list[tuple[int, ...]]:
    """Deployment shapes of the graph inputs.

    ``input_shapes``: see :data:`InputShapes` (:func:`normalize_input_shapes`).  Without it, a symbolic (or
    missing) *leading* dim is the batch and is bound to 1 (the deployment batch of TPU-MLIR's searches); any
    other unknown dim needs ``--input_shapes``.
    """
    ins = graph_inputs(model)
    shapes = normalize_input_shapes(input_shapes, [v.name for v in ins], path)
    if shapes is not None:
        if len(shapes) != len(ins):
            raise ModelError(
                f"--input_shapes gives {len(shapes)} shape(s) but '{path}' has {len(ins)} input(s) "
                f"({', '.join(v.name for v in ins)}); give one [..] per input."
            )
        for v, s in zip(ins, shapes):
            decl = declared_shape(v)
            if decl and len(decl) != len(s):
                raise ModelError(f"--input_shapes {list(s)} for input '{v.name}' has rank {len(s)}, the model declares rank {len(decl)}.")
            for i, (d, g) in enumerate(zip(decl, s)):
                if isinstance(d, int) and d != g and i > 0:
                    raise ModelError(f"--input_shapes gives dim {i} of input '{v.name}' as {g}, the model fixes it to {d}.")
        return shapes
    shapes = []
    for v in ins:
        decl = declared_shape(v)
        if not decl:
            raise ModelError(f"input '{v.name}' of '{path}' has no declared shape; pass --input_shapes, e.g. [[1,3,224,224]].")
        s = []
        for i, d in enumerate(decl):
            if isinstance(d, int):
                s.append(d)
            elif i == 0:
                s.append(1)
            else:
                example = [1] + [x if isinstance(x, int) else "?" for x in decl[1:]]
                raise ModelError(
                    f"input '{v.name}' dim {i} ({d if d else 'unknown'}) is dynamic; pass --input_shapes "
                    f"(e.g. [{str(example).replace(' ', '').replace(chr(39), '')}] with ? filled in)."
                )
        shapes.append(tuple(s))
    return shapes
