"""The released checkpoints: where they are, how big they are, and how to fetch each one once and keep it.

`RELEASES` (from `perceiver_io.registry`, where each task's record holds its release) names the six
checkpoints DeepMind released with Perceiver IO: the official URL (`RELEASE_BASE_URL` + file name), the
parameter count of the official manifest (4 bytes each in float32), a sha256 where one is known, and
optional mirrors: other URLs, and a Google Drive file fetched with gdown (`pip install
'perceiver-io-port[download]'`). No sha256 is published for these files, so the records have none; the
first download records one in the cache, and every later use checks it. A file
put in the cache by hand is used as it is, and its sha256 is not recorded: were that copy damaged, the
download that replaces it must not be held to its checksum.

Cache layout, in `get_cache_dir()` (`cache_dir=`, else `$PERCEIVER_IO_CACHE`, else
`$XDG_CACHE_HOME/perceiver_io`, else `~/.cache/perceiver_io`):

    language_perceiver_io_bytes.pickle           the released file as downloaded, checksum verified
    language_perceiver_io_bytes.pickle.partial   an interrupted download; the next download resumes it
    language_mlm.safetensors                     converted once (`perceiver_io.load("language_mlm")`)
    checksums.json                               {file name: sha256}, recorded by the first download
    .locks/                                      one lock file per release (fcntl, so POSIX only)

A file in the cache is used without touching the network, so a released file copied there by hand works
offline. Downloads stream through urllib into the `.partial` file, resume it with HTTP Range, retry
connection errors and 5xx answers with exponential back-off, and are checked against the sha256 before
an atomic rename puts them in place. A file that fails the check is deleted. The lock lets one process
download a release while another waits for it and then uses the finished file.

`PERCEIVER_IO_BASE_URL` (or `base_url=`) replaces the official bucket, e.g. with a mirror or a local
server.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

from .atomic import atomic_output
from .cache import CACHE_ENV, get_cache_dir
from .errors import ChecksumError, ConfigError, DownloadError
from .registry import BASE_URL_ENV, RELEASES, TASKS, Release, ported

GOOGLE_DRIVE_URL = "https://drive.google.com/uc?id={id}"
CHECKSUMS_FILE = "checksums.json"

_CHUNK_BYTES = 1 << 20
_RETRIED_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_USER_AGENT = "perceiver-io-port (urllib)"


@dataclass(frozen=True)
class DownloadOptions:
    """How to download: up to `retries` retries of failed attempts, after `backoff * 2**k` seconds (k = 0,
    1, ...); an attempt that received bytes starts the count again, so a slow link that keeps dropping still
    finishes. `timeout` is the seconds of silence allowed per read."""

    base_url: str | None = None
    quiet: bool = False
    retries: int = 3
    backoff: float = 1.0
    timeout: float = 30.0


def get_release(name: str) -> Release:
    try:
        return RELEASES[name]
    except KeyError:
        raise ConfigError(f"no released checkpoint is named {name!r}; released: {', '.join(RELEASES)}") from None


def original_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the released file of `name` is (or will be) in the cache."""
    return get_cache_dir(cache_dir) / get_release(name).file_name


def converted_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted checkpoint of `name` is (or will be) in the cache."""
    get_release(name)  # ConfigError for a name that is not released
    return get_cache_dir(cache_dir) / f"{name}.safetensors"


def is_ported(name: str) -> bool:
    """Whether the release's task has a PyTorch model (its `perceiver_io.registry.TaskSpec.model`)."""
    get_release(name)  # ConfigError for a name that is not released
    return TASKS[name].model is not None


def download(name: str, *, cache_dir: str | os.PathLike | None = None, **options: Any) -> Path:
    """The released file of `name` in the cache, downloaded first if it is not there.

    `options` are those of `DownloadOptions`. Raises DownloadError (ChecksumError for a wrong sha256)
    naming every URL tried and where to put the file by hand.
    """
    release = get_release(name)
    folder = get_cache_dir(cache_dir)
    settings = DownloadOptions(**options)
    with _release_lock(folder, release, settings.quiet):
        return _fetch_locked(name, release, folder, settings)


def download_converted(name: str, *, cache_dir: str | os.PathLike | None = None, **options: Any) -> Path:
    """The converted checkpoint of `name` in the cache; the released file is downloaded and converted once.

    Raises ConfigError, before any download, if the release's model is not ported to PyTorch yet.
    """
    release = get_release(name)
    if not is_ported(name):
        raise ConfigError(
            f"the {name} model is not ported to PyTorch yet (ported: {', '.join(ported())}), so "
            f"its released checkpoint cannot be loaded; perceiver_io.hub.download({name!r}) fetches the "
            "original Haiku file"
        )
    folder = get_cache_dir(cache_dir)
    target = converted_path(name, folder)
    if target.exists():
        return target
    settings = DownloadOptions(**options)
    with _release_lock(folder, release, settings.quiet):
        if not target.exists():
            from converters.convert import convert_checkpoint

            original = _fetch_locked(name, release, folder, settings)
            convert_checkpoint(original, target, name)
    return target


def _fetch_locked(name: str, release: Release, folder: Path, options: DownloadOptions) -> Path:
    """`download` under the release's lock."""
    target = folder / release.file_name
    expected = _expected_sha256(release, folder)
    if target.exists():
        if expected and (actual := _sha256(target)) != expected.sha256:
            raise ChecksumError(
                f"the cached {target} has sha256 {actual}, but {name} must have {expected}; "
                "delete it to download it again"
            )
        return target
    partial = target.with_name(f"{target.name}.partial")
    failures: list[DownloadError] = []
    for url in release.urls(options.base_url):
        try:
            _http_download(url, partial, name, options)
            _install(partial, target, expected, url)
            return target
        except DownloadError as error:
            failures.append(error)
    if release.gdrive_id:
        url = GOOGLE_DRIVE_URL.format(id=release.gdrive_id)
        try:
            with tempfile.TemporaryDirectory(prefix=".gdown-", dir=folder) as scratch:
                _install(_gdown_download(url, Path(scratch) / release.file_name, options), target, expected, url)
            return target
        except DownloadError as error:
            failures.append(error)
    raise _failure(name, release, target, partial, failures)


@dataclass(frozen=True)
class _ExpectedSha256:
    """The sha256 a release's file must have, and where it comes from (shown in every ChecksumError)."""

    sha256: str
    origin: str

    def __str__(self) -> str:
        return f"{self.sha256} ({self.origin})"


def _expected_sha256(release: Release, folder: Path) -> _ExpectedSha256 | None:
    """The registry's sha256, else the one the first download recorded in the cache's checksums.json."""
    if release.sha256:
        return _ExpectedSha256(release.sha256, "perceiver_io.registry")
    recorded = _recorded_checksums(folder).get(release.file_name)
    if recorded is None:
        return None
    return _ExpectedSha256(recorded, f"recorded in {folder / CHECKSUMS_FILE} by an earlier download; if that "
                           f"download was damaged, delete its entry {release.file_name!r} there")


def _install(downloaded: Path, target: Path, expected: _ExpectedSha256 | None, url: str) -> None:
    """Checks `downloaded` against `expected` (recording its sha256 if none is known), then renames it."""
    actual = _sha256(downloaded)
    if expected and actual != expected.sha256:
        downloaded.unlink()
        raise ChecksumError(f"{url}: the downloaded file has sha256 {actual}, expected {expected}; it was deleted")
    os.replace(downloaded, target)
    if not expected:
        _record_checksum(target.parent, target.name, actual)


def _failure(name: str, release: Release, target: Path, partial: Path, failures: list[DownloadError]) -> DownloadError:
    lines = [f"could not download the {name} checkpoint ({release.file_name}):"]
    lines += [f"  {failure}" for failure in failures]
    if partial.exists():
        lines.append(f"{partial.stat().st_size:,} bytes are kept in {partial}; the next download resumes there.")
    lines.append(
        f"If you have the file, put it at {target} (${CACHE_ENV} sets the folder); it is then used without "
        "any network."
    )
    kind = ChecksumError if any(isinstance(f, ChecksumError) for f in failures) else DownloadError
    return kind("\n".join(lines))


class _Transient(Exception):
    """A failure worth retrying: connection errors, timeouts, 5xx answers, a body cut short."""


def _http_download(url: str, partial: Path, name: str, options: DownloadOptions) -> None:
    """Completes `partial` from `url`, resuming what it holds; retries transient failures with back-off."""
    failed = 0
    while True:
        before = _size(partial)
        try:
            _http_attempt(url, partial, name, options)
            return
        except _Transient as error:
            failed = 1 if _size(partial) > before else failed + 1
            if failed > options.retries:
                raise DownloadError(f"{url}: {error} (gave up after {options.retries} retries)") from None
            time.sleep(options.backoff * 2 ** (failed - 1))


def _http_attempt(url: str, partial: Path, name: str, options: DownloadOptions) -> None:
    offset = _size(partial)
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as error:
        raise DownloadError(f"{url} is not a URL ({error}); check ${BASE_URL_ENV} (or base_url=)") from None
    try:
        response = urllib.request.urlopen(request, timeout=options.timeout)
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 416 and offset:
                _check_range_not_satisfiable(error, partial, offset)
                return
            if error.code in _RETRIED_STATUSES:
                raise _Transient(f"HTTP {error.code} {error.reason}") from None
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise _Transient(f"connection failed: {getattr(error, 'reason', error)}") from None
    with response:
        start, total = _body_range(url, response, offset)
        with open(partial, "r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            with _progress(name, total, start, options.quiet) as progress:
                while True:
                    try:
                        chunk = response.read(_CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as error:
                        raise _Transient(f"connection lost after {out.tell():,} bytes: {error}") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    progress.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
    if total is not None and size < total:
        raise _Transient(f"the connection closed after {size:,} of {total:,} bytes")


def _body_range(url: str, response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Where the body starts in the file, and the file's full size if the server says it."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
        if not match or int(match[1]) != offset:
            raise DownloadError(f"{url}: asked for bytes {offset}- and got Content-Range {content_range!r}")
        return offset, None if match[2] == "*" else int(match[2])
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _check_range_not_satisfiable(error: urllib.error.HTTPError, partial: Path, offset: int) -> None:
    """HTTP 416 for a resumed download: the partial file is complete if its size is the file's size."""
    match = re.fullmatch(r"bytes \*/(\d+)", (error.headers.get("Content-Range") or "").strip())
    if not (match and int(match[1]) == offset):
        partial.unlink()
        raise _Transient(f"the server refused to resume at byte {offset:,}; starting again")


def _gdown_download(url: str, output: Path, options: DownloadOptions) -> Path:
    try:
        import gdown
    except ImportError:
        raise DownloadError(
            f"{url}: the Google Drive copy needs gdown: pip install 'perceiver-io-port[download]'"
        ) from None
    quiet = options.quiet or not sys.stderr.isatty()
    try:
        gdown.download(url=url, output=str(output), quiet=quiet)
    except Exception as error:  # gdown raises its own and requests' errors
        raise DownloadError(f"{url}: gdown failed: {type(error).__name__}: {error}") from None
    if not output.is_file():
        raise DownloadError(f"{url}: gdown did not download the file")
    return output


class _LineProgress:
    """Progress as one rewritten stderr line, where tqdm is not installed."""

    def __init__(self, name: str, total: int | None, initial: int, stream: TextIO):
        self._name, self._total, self._done, self._stream = name, total, initial, stream
        self._shown_at = 0.0

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._show()
        self._stream.write("\n")
        self._stream.flush()

    def update(self, count: int) -> None:
        self._done += count
        if time.monotonic() - self._shown_at >= 0.25:
            self._show()

    def _show(self) -> None:
        self._shown_at = time.monotonic()
        line = f"\r{self._name}: {self._done / 1e6:,.1f} MB"
        if self._total:
            line += f" of {self._total / 1e6:,.1f} MB ({100 * self._done / self._total:.0f}%)"
        self._stream.write(line)
        self._stream.flush()


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, count: int) -> None:
        pass


def _progress(name: str, total: int | None, initial: int, quiet: bool) -> Any:
    """A progress bar on stderr: tqdm if installed, else one line; none if quiet or stderr is no TTY."""
    if quiet or not sys.stderr.isatty():
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _LineProgress(name, total, initial, sys.stderr)
    return tqdm(desc=name, total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr)


@contextlib.contextmanager
def _locked(path: Path, waiting_message: str | None = None) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed), held across processes for the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                print(waiting_message, file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _release_lock(folder: Path, release: Release, quiet: bool) -> contextlib.AbstractContextManager[None]:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"the cache folder {folder} is a file, not a folder: set ${CACHE_ENV} (or "
                                 "cache_dir=) to a folder")
    waiting = None if quiet or not sys.stderr.isatty() else (
        f"waiting for another process that is fetching {release.file_name} into {folder}"
    )
    return _locked(folder / ".locks" / f"{release.file_name}.lock", waiting)


def _recorded_checksums(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUMS_FILE
    try:
        checksums = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DownloadError(f"{path} is not readable JSON; delete it (the checksums are recorded again)") from None
    if not isinstance(checksums, dict):
        raise DownloadError(f"{path} is not a {{file name: sha256}} mapping; delete it")
    return checksums


def _record_checksum(folder: Path, file_name: str, sha256: str) -> None:
    """Adds `file_name: sha256` to the cache's checksums.json, atomically and under its own lock."""
    with _locked(folder / ".locks" / f"{CHECKSUMS_FILE}.lock"):
        checksums = _recorded_checksums(folder)
        checksums[file_name] = sha256
        with atomic_output(folder / CHECKSUMS_FILE, overwrite=True, text=True) as out:
            json.dump(checksums, out, indent=1, sort_keys=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
