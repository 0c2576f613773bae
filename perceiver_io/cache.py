"""The project's cache folder, where released checkpoints, their conversions and the conversion's shape
cache are kept (`perceiver_io.hub` describes what it holds)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PERCEIVER_IO_CACHE"


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$PERCEIVER_IO_CACHE`, else `$XDG_CACHE_HOME/perceiver_io`, else `~/.cache/perceiver_io`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "perceiver_io"
