"""Released checkpoints: the registry, and download, resume, checksums, cache, locking and `load(name)`,
run against a real HTTP server on 127.0.0.1 that serves a file in the released format (the golden
language tree at reduced size), honours Range, and fails on request."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from converters.cli import main
from converters.haiku_pickle import load_haiku_checkpoint, save_haiku_pickle
from perceiver_io import hub
from perceiver_io.checkpoint_file import read_metadata
from perceiver_io.errors import CheckpointFileError, ChecksumError, ConfigError, DownloadError
from perceiver_io.registry import RELEASE_BASE_URL, TASKS, parse_config
from perceiver_io.serialization import load

from .conftest import GOLDEN, manifest

ROOT = Path(__file__).resolve().parents[1]
LANGUAGE = hub.RELEASES["language_mlm"]
REDUCED_CONFIG_FILE = GOLDEN / "language_mlm" / "reduced_config.json"
REDUCED_CONFIG = json.loads(REDUCED_CONFIG_FILE.read_text())
FAST = {"retries": 2, "backoff": 0.01, "timeout": 5.0}  # bounded retries, tiny back-off


class FileServer:
    """Serves `files` over HTTP/1.0 on 127.0.0.1 with Range support, logs every request, and plays the
    faults scripted per path in `script`: ("drop", n) sends n body bytes then closes the connection;
    ("status", code) answers `code`; "corrupt" flips a byte; "slow" sends the body in small timed chunks."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.script: dict[str, list] = {}
        self.requests: list[dict[str, str | None]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_for(self, path: str) -> list[dict[str, str | None]]:
        return [r for r in self.requests if r["path"] == path]

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        with self._lock:
            self.requests.append({"path": path, "range": handler.headers.get("Range"),
                                  "user_agent": handler.headers.get("User-Agent")})
            queue = self.script.get(path) or []
            action = queue.pop(0) if queue else None
        body = self.files.get(path)
        if body is None:
            handler.send_error(404)
            return
        if isinstance(action, tuple) and action[0] == "status":
            handler.send_error(action[1])
            return
        if action == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if requested:
            start = int(requested[1])
            if start >= len(body):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(body)}")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body) - start))
        handler.end_headers()
        payload = body[start:]
        if isinstance(action, tuple) and action[0] == "drop":
            handler.wfile.write(payload[: action[1]])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "slow":
            for offset in range(0, len(payload), 1 << 15):
                handler.wfile.write(payload[offset: offset + (1 << 15)])
                handler.wfile.flush()
                time.sleep(0.02)
            return
        handler.wfile.write(payload)


FILE_PATH = f"/perceiver_io/{LANGUAGE.file_name}"


@pytest.fixture(scope="module")
def released_bytes(tmp_path_factory) -> bytes:
    """The golden language tree written as the released file is written."""
    params = load_haiku_checkpoint(GOLDEN / "language_mlm" / "language_perceiver_io_bytes.pickle").params
    path = tmp_path_factory.mktemp("released") / LANGUAGE.file_name
    save_haiku_pickle(path, params)
    return path.read_bytes()


@pytest.fixture
def server(released_bytes):
    files = FileServer()
    files.files[FILE_PATH] = released_bytes
    yield files
    files.close()


@pytest.fixture
def cache(server, tmp_path, monkeypatch) -> Path:
    """The cache folder, with the official bucket replaced by the local server (environment variables),
    and the language release described with the reduced configuration of the served file."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(hub.CACHE_ENV, str(folder))
    monkeypatch.setenv(hub.BASE_URL_ENV, f"{server.url}/perceiver_io/")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # gdown keeps cookies under ~/.cache
    reduced = replace(TASKS["language_mlm"], released_config=parse_config("language_mlm", REDUCED_CONFIG))
    monkeypatch.setitem(TASKS, "language_mlm", reduced)
    return folder


def cache_listing(folder: Path) -> list[str]:
    """What the cache holds, lock files aside."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".locks" not in p.parts)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/perceiver_io/"


def test_registry_lists_the_six_releases_with_official_urls_and_manifest_sizes():
    assert set(hub.RELEASES) == {path.stem for path in (ROOT / "tests" / "data" / "manifests").glob("*.json")}
    for name, release in hub.RELEASES.items():
        official = manifest(name)
        assert TASKS[name].release is release and TASKS[name].released_config is not None
        assert RELEASE_BASE_URL + release.file_name == official["checkpoint"]
        assert release.urls(RELEASE_BASE_URL)[0] == official["checkpoint"]
        assert release.num_parameters == official["total_param_count"]
        assert release.approx_bytes == 4 * official["total_param_count"]
    # docs/official-numerics.md#released-checkpoints
    assert round(hub.RELEASES["language_mlm"].approx_bytes / 1e9, 2) == 0.80


def test_cache_folder_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(hub.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.get_cache_dir() == tmp_path / ".cache" / "perceiver_io"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.get_cache_dir() == tmp_path / "xdg" / "perceiver_io"
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "env"))
    assert hub.get_cache_dir() == tmp_path / "env"
    assert hub.get_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_download_streams_into_the_cache_and_records_the_checksum(cache, server, released_bytes, capfd):
    path = hub.download("language_mlm", **FAST)
    assert path == cache / LANGUAGE.file_name
    assert path.read_bytes() == released_bytes
    assert json.loads((cache / hub.CHECKSUMS_FILE).read_text()) == {LANGUAGE.file_name: sha256(released_bytes)}
    assert cache_listing(cache) == [hub.CHECKSUMS_FILE, LANGUAGE.file_name]
    assert [r["range"] for r in server.requests_for(FILE_PATH)] == [None]
    assert capfd.readouterr().err == ""  # stderr is no TTY here: no progress output


@pytest.mark.parametrize("name", list(hub.RELEASES))
def test_every_release_downloads(name, cache, server):
    release = hub.RELEASES[name]
    content = os.urandom(1000) + name.encode()
    server.files[f"/perceiver_io/{release.file_name}"] = content
    assert hub.download(name, **FAST).read_bytes() == content


def test_connection_dropped_mid_file_is_resumed_with_range(cache, server, released_bytes):
    cut = len(released_bytes) // 3
    server.script[FILE_PATH] = [("drop", cut)]
    path = hub.download("language_mlm", **FAST)
    assert path.read_bytes() == released_bytes
    assert [r["range"] for r in server.requests_for(FILE_PATH)] == [None, f"bytes={cut}-"]
    assert cache_listing(cache) == [hub.CHECKSUMS_FILE, LANGUAGE.file_name]


def test_interrupted_download_leaves_a_partial_file_that_the_next_download_resumes(cache, server, released_bytes):
    cut = len(released_bytes) // 2
    server.script[FILE_PATH] = [("drop", cut)]
    with pytest.raises(DownloadError) as failure:
        hub.download("language_mlm", retries=0, backoff=0.01, timeout=5.0)
    partial = cache / f"{LANGUAGE.file_name}.partial"
    assert f"{FILE_PATH}: the connection closed after {cut:,} of {len(released_bytes):,} bytes" in str(failure.value)
    assert f"{cut:,} bytes are kept in {partial}; the next download resumes there" in str(failure.value)
    assert cache_listing(cache) == [partial.name]
    assert partial.stat().st_size == cut

    assert hub.download("language_mlm", **FAST).read_bytes() == released_bytes
    assert [r["range"] for r in server.requests_for(FILE_PATH)] == [None, f"bytes={cut}-"]
    assert not partial.exists()


def test_server_errors_are_retried_a_bounded_number_of_times(cache, server, released_bytes):
    server.script[FILE_PATH] = [("status", 503), ("status", 502)]
    assert hub.download("language_mlm", **FAST).read_bytes() == released_bytes
    assert len(server.requests_for(FILE_PATH)) == 3

    hub.original_path("language_mlm").unlink()
    server.script[FILE_PATH] = [("status", 503)] * 3
    with pytest.raises(DownloadError, match=r"HTTP 503 .*gave up after 2 retries"):
        hub.download("language_mlm", **FAST)
    assert len(server.requests_for(FILE_PATH)) == 3 + 3


@pytest.mark.parametrize("known_from", ["registry", "first download"])
def test_corrupt_download_is_rejected_by_checksum_and_nothing_is_kept(known_from, cache, server, released_bytes,
                                                                      monkeypatch):
    if known_from == "registry":
        _change_release(monkeypatch, sha256=sha256(released_bytes))
        expected_listing, origin = [], "perceiver_io.registry"
    else:
        hub.download("language_mlm", **FAST).unlink()
        expected_listing = [hub.CHECKSUMS_FILE]
        origin = f"recorded in {cache / hub.CHECKSUMS_FILE} by an earlier download"
    server.script[FILE_PATH] = ["corrupt"]
    with pytest.raises(ChecksumError) as failure:
        hub.download("language_mlm", **FAST)
    assert f"expected {sha256(released_bytes)} ({origin}" in str(failure.value)
    assert "); it was deleted" in str(failure.value)
    assert cache_listing(cache) == expected_listing

    assert hub.download("language_mlm", **FAST).read_bytes() == released_bytes  # the next try starts afresh


def test_corrupt_cached_file_is_refused(cache, server):
    path = hub.download("language_mlm", **FAST)
    path.write_bytes(b"\x80\x03damaged")
    with pytest.raises(ChecksumError, match=f"the cached {path} has sha256 .*recorded in "
                       f"{cache / hub.CHECKSUMS_FILE} by an earlier download.* delete it to download it again"):
        hub.download("language_mlm", **FAST)


def test_a_damaged_file_put_by_hand_does_not_block_the_download_that_replaces_it(cache, server, released_bytes):
    cache.mkdir()
    by_hand = cache / LANGUAGE.file_name
    by_hand.write_bytes(released_bytes[: len(released_bytes) // 2])
    assert hub.download("language_mlm", **FAST) == by_hand  # used as it is: no checksum is known
    by_hand.unlink()  # as the conversion's error about the truncated file says
    assert hub.download("language_mlm", **FAST).read_bytes() == released_bytes
    assert json.loads((cache / hub.CHECKSUMS_FILE).read_text()) == {LANGUAGE.file_name: sha256(released_bytes)}


@pytest.mark.parametrize("setting, message", [
    ("base_url", "notaurl/language_perceiver_io_bytes.pickle is not a URL (unknown url type"),
    ("cache_is_a_file", "the cache folder {cache} is a file, not a folder: set $PERCEIVER_IO_CACHE"),
])
def test_misconfigured_download_exits_2_with_a_message(cache, server, capsys, monkeypatch, setting, message):
    if setting == "base_url":
        monkeypatch.setenv(hub.BASE_URL_ENV, "notaurl")
    else:
        cache.write_bytes(b"")
    assert main(["--download", "--task", "language_mlm"]) == 2
    assert message.format(cache=cache) in capsys.readouterr().err
    assert server.requests == []


def test_missing_file_names_the_url_and_where_to_put_it(cache, server):
    del server.files[FILE_PATH]
    with pytest.raises(DownloadError) as failure:
        hub.download("language_mlm", **FAST)
    message = str(failure.value)
    assert f"{server.url}{FILE_PATH}: HTTP 404 Not Found" in message
    assert f"put it at {cache / LANGUAGE.file_name}" in message
    assert len(server.requests_for(FILE_PATH)) == 1  # a 404 is not retried
    assert cache_listing(cache) == []


def test_unreachable_network_fails_clearly_after_bounded_retries(cache, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv(hub.BASE_URL_ENV, url)
    start = time.monotonic()
    with pytest.raises(DownloadError) as failure:
        hub.download("language_mlm", **FAST)
    assert time.monotonic() - start < 2
    message = str(failure.value)
    assert f"{url}{LANGUAGE.file_name}: connection failed" in message and "gave up after 2 retries" in message
    assert f"put it at {cache / LANGUAGE.file_name}" in message


def test_cached_and_hand_placed_files_are_used_without_network(cache, server, released_bytes, monkeypatch):
    hub.download("language_mlm", **FAST)
    monkeypatch.setenv(hub.BASE_URL_ENV, closed_port_url())
    assert hub.download("language_mlm", **FAST).read_bytes() == released_bytes
    assert len(server.requests) == 1

    by_hand = cache.parent / "by_hand"
    by_hand.mkdir()
    (by_hand / LANGUAGE.file_name).write_bytes(released_bytes)
    assert hub.download("language_mlm", cache_dir=by_hand, **FAST) == by_hand / LANGUAGE.file_name
    assert not (by_hand / hub.CHECKSUMS_FILE).exists()  # only a download records a checksum
    assert len(server.requests) == 1


def test_two_processes_downloading_the_same_file_do_not_corrupt_it(cache, server, released_bytes):
    server.script[FILE_PATH] = ["slow", "slow"]
    script = ("import sys\nfrom perceiver_io import hub\nsys.stdin.readline()\n"
              "print(hub.download('language_mlm', cache_dir=sys.argv[1], base_url=sys.argv[2], retries=0))\n")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(cache), f"{server.url}/perceiver_io/"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=environment)
        for _ in range(2)
    ]
    for process in processes:  # both are started and waiting: let them go at once
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [process.communicate(timeout=30) for process in processes]
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err
        assert out.strip() == str(cache / LANGUAGE.file_name)
    assert (cache / LANGUAGE.file_name).read_bytes() == released_bytes
    assert len(server.requests_for(FILE_PATH)) == 1  # the second waited for the lock, then used the file
    assert cache_listing(cache) == [hub.CHECKSUMS_FILE, LANGUAGE.file_name]


def _with_google_drive_copy(server, monkeypatch, content: bytes, sha: str | None = None) -> str:
    """The language release with only a Google Drive copy, which the local server plays."""
    del server.files[FILE_PATH]
    server.files["/drive/file-id"] = content
    monkeypatch.setattr(hub, "GOOGLE_DRIVE_URL", f"{server.url}/drive/{{id}}")
    _change_release(monkeypatch, gdrive_id="file-id", sha256=sha)
    return "/drive/file-id"


def _change_release(monkeypatch, **changes) -> None:
    """The language task's record with its release changed, for this test (hub.RELEASES is a view of it)."""
    spec = TASKS["language_mlm"]
    monkeypatch.setitem(TASKS, "language_mlm", replace(spec, release=replace(spec.release, **changes)))


def test_google_drive_mirror_is_fetched_with_gdown_and_checked(cache, server, released_bytes, monkeypatch):
    gdown = pytest.importorskip("gdown")
    calls = []
    real_download = gdown.download
    monkeypatch.setattr(gdown, "download", lambda **kwargs: calls.append(kwargs) or real_download(**kwargs))
    drive_path = _with_google_drive_copy(server, monkeypatch, released_bytes)
    assert hub.download("language_mlm", **FAST).read_bytes() == released_bytes
    assert [call["url"] for call in calls] == [f"{server.url}{drive_path}"]
    assert len(server.requests_for(drive_path)) == 1
    assert json.loads((cache / hub.CHECKSUMS_FILE).read_text()) == {LANGUAGE.file_name: sha256(released_bytes)}
    assert cache_listing(cache) == [hub.CHECKSUMS_FILE, LANGUAGE.file_name]


def test_google_drive_copy_with_a_wrong_checksum_is_rejected(cache, server, released_bytes, monkeypatch):
    pytest.importorskip("gdown")
    drive_path = _with_google_drive_copy(server, monkeypatch, released_bytes[::-1], sha=sha256(released_bytes))
    with pytest.raises(ChecksumError) as failure:
        hub.download("language_mlm", **FAST)
    assert f"{FILE_PATH}: HTTP 404" in str(failure.value)
    assert f"{server.url}{drive_path}: the downloaded file has sha256" in str(failure.value)
    assert cache_listing(cache) == []


def test_google_drive_copy_without_gdown_says_what_to_install(cache, server, released_bytes, monkeypatch):
    _with_google_drive_copy(server, monkeypatch, released_bytes)
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown fails
    with pytest.raises(DownloadError, match=r"needs gdown: pip install 'perceiver-io-port\[download\]'"):
        hub.download("language_mlm", **FAST)


def test_load_by_name_downloads_and_converts_once_then_works_offline(cache, server, released_bytes, monkeypatch):
    model = load("language_mlm")
    converted = cache / "language_mlm.safetensors"
    assert read_metadata(converted)["source_sha256"] == sha256(released_bytes)
    assert cache_listing(cache) == sorted([hub.CHECKSUMS_FILE, LANGUAGE.file_name, converted.name])
    reference = load(GOLDEN / "language_mlm" / "language_perceiver_io_bytes.pickle", task="language_mlm",
                     config=REDUCED_CONFIG)
    for (key, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(ours, theirs), key
    assert len(server.requests) == 1

    written = converted.stat().st_mtime_ns
    (cache / LANGUAGE.file_name).unlink()
    monkeypatch.setenv(hub.BASE_URL_ENV, closed_port_url())
    again = load("language_mlm", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in again.parameters()) and not again.training
    assert converted.stat().st_mtime_ns == written and len(server.requests) == 1


def test_load_of_an_original_haiku_file_needs_its_task(golden_language, tmp_path):
    with pytest.raises(ConfigError, match="needs task="):
        load(golden_language.checkpoint)
    model = load(golden_language.checkpoint, task="language_mlm", config=golden_language.config)
    assert model.config.max_seq_len == golden_language.config["MAX_SEQ_LEN"]
    with pytest.raises(CheckpointFileError, match="is not the name of a released checkpoint"):
        load("language-mlm")
    with pytest.raises(ConfigError, match="has its own task and configuration"):
        load("language_mlm", task="language_mlm")


def test_unported_release_is_refused_before_any_download(cache, server, monkeypatch):
    monkeypatch.setitem(TASKS, "optical_flow", replace(TASKS["optical_flow"], model=None))
    with pytest.raises(ConfigError, match=r"optical_flow model is not ported to PyTorch yet.*hub.download"):
        load("optical_flow")
    assert server.requests == []


def test_cli_downloads_converts_and_lists(cache, server, tmp_path, capsys, monkeypatch):
    output = tmp_path / "language.safetensors"
    assert main(["--download", "--task=language_mlm", "--config", str(REDUCED_CONFIG_FILE), "-o", str(output)]) == 0
    assert load(output).config.max_seq_len == REDUCED_CONFIG["MAX_SEQ_LEN"]
    exported = tmp_path / "back.pkl"
    assert main(["export", "language_mlm", "-o", str(exported)]) == 0  # a released name: converted in the cache
    assert load_haiku_checkpoint(exported).params.keys() == load_haiku_checkpoint(hub.download("language_mlm")).params.keys()
    capsys.readouterr()

    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    # the small stand-in served as the language release is far from the release's size: shown, with a '?';
    # the export by name converted it in the cache
    assert re.search(r"language_mlm +language_perceiver_io_bytes\.pickle +0\.80 GB +0\.3 MB\? +yes +"
                     r"perceiver_io\.pipelines\.fill_mask", listing)
    assert re.search(r"optical_flow +optical_flow_checkpoint\.pystate +0\.16 GB +no +no", listing)
    assert f"cache: {cache}" in listing
    with open(hub.original_path("optical_flow"), "wb") as placed:  # a file of the release's size (sparse)
        placed.truncate(hub.RELEASES["optical_flow"].approx_bytes + 1000)
    assert main(["list"]) == 0
    assert re.search(r"optical_flow +optical_flow_checkpoint\.pystate +0\.16 GB +yes +no", capsys.readouterr().out)

    monkeypatch.setitem(TASKS, "optical_flow", replace(TASKS["optical_flow"], model=None))
    assert main(["--download", "--task", "optical_flow", "-o", str(tmp_path / "flow.safetensors")]) == 2
    assert "optical_flow model is not ported to PyTorch yet" in capsys.readouterr().err
    del server.files[FILE_PATH]
    (cache / LANGUAGE.file_name).unlink()
    assert main(["--download", "--task", "language_mlm"]) == 2
    assert "HTTP 404 Not Found" in capsys.readouterr().err


def test_progress_line_without_tqdm():
    stream = io.StringIO()
    with hub._LineProgress("file.pickle", 2_000_000, 500_000, stream) as progress:
        progress.update(1_500_000)
    assert stream.getvalue().endswith("\rfile.pickle: 2.0 MB of 2.0 MB (100%)\n")
