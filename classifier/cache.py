"""The project's cache folder, shared by training (datasets, features) and serving (engine choice, compiled engines)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TRANSFER_SERVE_CACHE"


def default_cache_dir() -> Path:
    """$TRANSFER_SERVE_CACHE, else $XDG_CACHE_HOME/transfer-serve, else ~/.cache/transfer-serve."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transfer-serve"
