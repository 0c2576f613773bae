"""Atomic output (`perceiver_io.atomic.atomic_output`, under every file the project writes): nothing
replaced without `overwrite`, not even a file that appears meanwhile; never anything but a regular file;
no temporary file left behind."""

from __future__ import annotations

import os

import pytest

from perceiver_io.atomic import atomic_output


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_the_file_appears_complete_and_replaces_only_with_overwrite(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_output(target) as out:
        out.write(b"first")
        assert not target.exists()
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_output(target):
            pass
    with atomic_output(target, overwrite=True) as out:
        out.write(b"second")
    assert target.read_bytes() == b"second" and _leftovers(tmp_path) == []


def test_a_file_that_appears_while_writing_is_kept(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        with atomic_output(target) as out:
            out.write(b"ours")
            target.write_bytes(b"precious")
    assert target.read_bytes() == b"precious" and _leftovers(tmp_path) == []


def test_a_dangling_link_counts_as_an_existing_file(tmp_path):
    link = tmp_path / "out.bin"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        with atomic_output(link):
            pass
    assert link.is_symlink()


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_what_is_not_a_regular_file_is_never_replaced(tmp_path, kind):
    target = tmp_path / "out.bin"
    if kind == "folder":
        target.mkdir()
        error, words = IsADirectoryError, "is a folder"
    else:
        os.mkfifo(target)
        error, words = FileExistsError, "is a FIFO, not a regular file"
    for overwrite in (False, True):
        with pytest.raises(error, match=words):
            with atomic_output(target, overwrite=overwrite):
                pass
    assert (target.is_dir() if kind == "folder" else not target.is_file()) and _leftovers(tmp_path) == []


def test_an_unwritable_place_is_named_by_the_output_not_the_temporary_file(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(NotADirectoryError) as raised:
        with atomic_output(tmp_path / "afile" / "out.bin"):
            pass
    assert str(raised.value).startswith(f"cannot write {tmp_path / 'afile' / 'out.bin'}"), str(raised.value)


def test_a_full_disk_is_reported_about_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    target = tmp_path / "out.bin"
    with pytest.raises(OSError) as raised:
        with atomic_output(target) as out:
            out.write(b"data")
    assert str(raised.value) == f"cannot write {target}: No space left on device"
    assert list(tmp_path.iterdir()) == []
