"""Where qsens keeps its user-level files (zoo, JAX compilation cache); no dependencies."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$QSENS_HOME`` if set, else ``$XDG_CACHE_HOME/qsens``, else ``~/.cache/qsens``."""
    home = os.environ.get("QSENS_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qsens"
