"""Atomic file output, shared by every writer of the project (torch-free)."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, text: bool = False) -> Iterator[IO]:
    """A file to write that appears at `path` only once complete (flushed, fsynced, renamed over it).

    An existing file is kept (FileExistsError) unless `overwrite`; on any failure neither the output nor
    the temporary file is left behind. The temporary file sits beside `path` with the mode `open` gives.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--force) to replace it")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w" if text else "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
