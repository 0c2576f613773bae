"""Atomic file output, shared by every writer of the project, and what is not a regular file (torch-free)."""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, text: bool = False) -> Iterator[IO]:
    """A file to write that appears at `path` only once complete (flushed, fsynced, then moved into place).

    An existing file is kept (FileExistsError) unless `overwrite`, also when one appears at `path` while
    this one is written: it is published with a hard link, which fails rather than replace anything.
    Whatever is not a regular file (a folder, a device such as /dev/null, a pipe) is never replaced. On
    any failure neither the output nor the temporary file is left behind. The temporary file sits beside
    `path` with the mode `open` gives; missing folders above it are made. An OSError of writing (no
    permission, a full disk) names `path`, not the temporary file.
    """
    path = Path(path)
    check_output(path, overwrite)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # from mkdir: a file where a folder should be
        raise NotADirectoryError(f"cannot write {path}: a file stands where a folder above it should be") from None
    except OSError as error:
        raise _about_writing(error, path) from None
    try:
        with os.fdopen(fd, "w" if text else "wb") as out:
            yield _Output(out, path)
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as error:
                raise _about_writing(error, path) from None
        _publish(temporary, path, overwrite)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class _Output:
    """The temporary file as its writer sees it: a write that fails names the output."""

    def __init__(self, file: IO, path: Path):
        self._file, self._path = file, path

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as error:
            raise _about_writing(error, self._path) from None

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def _about_writing(error: OSError, path: Path) -> OSError:
    """`error` (of the same type) as one about writing `path`."""
    return type(error)(f"cannot write {path}: {error.strerror or error}")


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What is at `path` if it is not a regular file: "a directory", "a FIFO", "a device" or "a socket"
    (reading one would fail or block); None for a regular file, or where nothing can be found."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"


def check_output(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raises, as `atomic_output` would, unless a file may be written at `path`: nothing there, or a
    regular file and `overwrite`. For a check before long work whose result goes to `path`."""
    if not os.path.lexists(path):
        return
    kind = special_file_kind(path)
    if kind == "a directory":
        raise IsADirectoryError(f"{path} is a folder; give the output file's name")
    if kind:
        raise FileExistsError(f"{path} is {kind}, not a regular file; it is never replaced")
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass --force (overwrite=True) to replace it")


def _publish(temporary: Path, path: Path, overwrite: bool) -> None:
    """Moves the finished `temporary` to `path`: replacing what is there only if `overwrite`."""
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while it was being written; it was kept") from None
    except OSError:  # a file system without hard links
        check_output(path)
        os.replace(temporary, path)
        return
    temporary.unlink()
