"""Load tests/quant/oracle.py as ``quant_oracle`` (unique name: other test folders may have an oracle.py)."""

import importlib.util
import pathlib
import sys

_path = pathlib.Path(__file__).with_name("oracle.py")
if "quant_oracle" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("quant_oracle", _path)
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["quant_oracle"] = _mod
    _spec.loader.exec_module(_mod)
