"""``--we --bc --sq`` for every verb that calibrates or searches: the aids run first (:mod:`qsens.search.aidjob`),
the verb then runs unchanged on the aided ONNX model it wrote (``--save_model``, default
``<out_dir>/<model stem>.aided_<aids>.onnx``), as TPU-MLIR's tools run on the Top MLIR whose weights
``run_calibration.py --we --bc --sq`` rewrote: the calibration after the aids is the verb's own, and the float
reference of every later similarity is the aided float model (TPU-MLIR's behaviour; ``docs/accuracy_aids.md``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from ..errors import SearchError
from .aidjob import AidSettings, apply_aids


def aid_settings(o) -> AidSettings:
    """The aid flags of an options object or argparse namespace (absent ones: TPU-MLIR's defaults)."""
    s = AidSettings(we=bool(getattr(o, "we", False)), bc=bool(getattr(o, "bc", False)), sq=bool(getattr(o, "sq", False)),
                    we_relu6=getattr(o, "we_relu6", None) or "tpu_mlir",
                    bc_inference_num=int(30 if getattr(o, "bc_inference_num", None) is None else o.bc_inference_num),
                    min_layer_cos=float(getattr(o, "min_layer_cos", 0.99)),
                    expected_cos=float(getattr(o, "expected_cos", 0.99)))
    s.validate()
    return s


def aided_model_path(o, settings: AidSettings, out_dir: str | None) -> str:
    if getattr(o, "save_model", None):
        return o.save_model
    stem = os.path.splitext(os.path.basename(o.model))[0]
    return os.path.join(out_dir or ".", f"{stem}.aided_{settings.tag()}.onnx")


def run_aids(o, *, out_dir: str | None = None, input_table: str | None = None,
             echo: Callable[[str], None] = print) -> dict:
    """Apply the aids of ``o`` (options or namespace) and return the replacements for it: ``model`` (the aided
    ONNX), ``preset`` (the original file's; ``""`` = none, so the new file name is not looked up), the aid flags
    cleared.  ``{}`` without aid flags.  ``input_table``: a ``--calibration_table`` the verb would read (refused:
    it was calibrated before the aids)."""
    from ..data.dataset import select_files
    from ..pipeline import preset_for_model
    from .workflows import preprocess_for

    s = aid_settings(o)
    if not s.any:
        return {}
    if input_table:
        raise SearchError(f"--we/--bc/--sq change the weights, so the table '{input_table}' (calibrated before "
                          "them) does not fit the aided model; drop --calibration_table (qsens calibrates the aided "
                          "model) or run `qsens calibrate --we ... --save_model M.onnx` and search M.onnx with its table")
    dataset = o.dataset if (o.dataset or o.data_list) else None
    seed = getattr(o, "seed", 1684)
    cal_files = select_files(dataset=dataset, data_list=o.data_list, input_num=getattr(o, "input_num", 0), seed=seed)
    bc_files = select_files(dataset=dataset, data_list=o.data_list, input_num=s.bc_inference_num, seed=seed) if s.bc else []
    out = aided_model_path(o, s, out_dir)
    preset = o.preset if getattr(o, "preset", None) is not None else preset_for_model(o.model)
    apply_aids(o.model, o.input_shapes, s, out, cal_files=cal_files, bc_files=bc_files,
               make_pp=lambda g: preprocess_for(o, g), name_style=getattr(o, "name_style", "tpu_mlir"),
               tune_num=int(getattr(o, "tune_num", 5) or 5), progress=not getattr(o, "quiet", False), echo=echo)
    return {"model": out, "preset": preset or "", "we": False, "bc": False, "sq": False}


def with_aids(o, *, out_dir: str | None = None, input_table: str | None = None,
              echo: Callable[[str], None] = print):
    """A copy of the options ``o`` on the aided model (``o`` itself without aid flags)."""
    rep = run_aids(o, out_dir=out_dir, input_table=input_table, echo=echo)
    if not rep:
        return o
    return dataclasses.replace(o, **{k: v for k, v in rep.items() if k in {f.name for f in dataclasses.fields(o)}})
