"""Where progan_fast keeps what it builds once and reuses: prepared image arrays and the compiled CUDA extension.

``$PROGAN_FAST_CACHE`` if set, else ``$XDG_CACHE_HOME/progan_fast``, else ``~/.cache/progan_fast``.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "PROGAN_FAST_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "progan_fast"
