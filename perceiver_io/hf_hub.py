"""Perceiver weights from Hugging Face: what is a transformers-format folder, and a Hub repository id
(`deepmind/language-perceiver`, ...) as the local transformers-format folder that `huggingface_hub` keeps
in its own cache, with its revisions and its offline switch (`HF_HUB_OFFLINE=1`: the cache only, never the
network).

huggingface_hub does the downloading, caching and revision handling; this module only decides what is a
folder or a repository id and names what went wrong in one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DownloadError, one_line

REPOSITORY_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hub model id, `owner/name`."""
CHECKPOINT_SUFFIXES = (".pickle", ".pkl", ".pystate", ".npz", ".safetensors", ".bin", ".json")
WEIGHT_PATTERNS = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
                   "pytorch_model.bin"]
"""What is fetched of a repository: its config and weights, not its other files."""
OFFLINE_VALUES = ("1", "on", "yes", "true")


def is_transformers_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder in transformers' format: one holding a config.json."""
    return (Path(path) / "config.json").is_file()


def is_repository_id(name: str | os.PathLike) -> bool:
    """Whether `name` is a Hub repository id rather than a local path: `owner/name`, neither that path nor
    its first folder here, and no checkpoint file's suffix."""
    text = os.fspath(name)
    return (isinstance(text, str) and REPOSITORY_ID.fullmatch(text) is not None and not Path(text).exists()
            and not Path(text.partition("/")[0]).exists()  # a local folder: a path mistyped, not an id
            and not text.lower().endswith(CHECKPOINT_SUFFIXES))


def offline() -> bool:
    """`HF_HUB_OFFLINE`, read at each call (huggingface_hub reads it once, when imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def repository_folder(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of the repository's config and weights at `revision` (default its main branch),
    downloaded into huggingface_hub's cache if need be; offline, the cached copy or a DownloadError."""
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError:
        raise DownloadError(f"{repo_id} is a Hugging Face Hub id, which needs huggingface_hub: pip install "
                            "'perceiver-io-port[hub]'") from None
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=WEIGHT_PATTERNS,
                                      local_files_only=offline()))
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set and the cache" if offline() else "the Hub could not be reached and the cache"
        raise DownloadError(f"{repo_id}{'@' + revision if revision else ''}: {where} has no copy of it; "
                            "download it once online (hf download " + repo_id + ")") from None
    except (HfHubHTTPError, HFValidationError, OSError) as error:
        raise DownloadError(f"{repo_id}: the Hugging Face Hub refused it ({one_line(error)})") from None
