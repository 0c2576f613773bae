"""`convert-checkpoint` on bad input and interruptions: exit status 2 with a message that names the file
(never a traceback), 130 on Ctrl-C, and no temporary file left behind by SIGTERM or SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from converters import cli, haiku_pickle
from converters.cli import main
from converters.convert import convert_checkpoint

from .conftest import GOLDEN

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = GOLDEN / "language_mlm" / "language_perceiver_io_bytes.pickle"
CONFIG = GOLDEN / "language_mlm" / "reduced_config.json"


def _convert(capsys, source, output, *extra) -> tuple[int, str]:
    code = main([str(source), "-o", str(output), "--task", "language_mlm", *map(str, extra)])
    return code, capsys.readouterr().err


def test_a_directory_as_source_exits_2(tmp_path, capsys):
    source = tmp_path / "folder.pickle"
    source.mkdir()
    code, err = _convert(capsys, source, tmp_path / "out.safetensors")
    assert code == 2 and f"{source} is a directory, not a regular file" in err


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_folder_as_output_exits_2_before_reading_the_source(tmp_path, capsys, force):
    output = tmp_path / "out.safetensors"
    output.mkdir()
    code, err = _convert(capsys, CHECKPOINT, output, "--config", CONFIG, *force)
    assert code == 2 and f"{output} is a folder" in err and output.is_dir()


def test_an_unreadable_source_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    def refuse(path, *args, **kwargs):  # tests run as root, whom file modes do not stop
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(haiku_pickle, "open", refuse, raising=False)
    code, err = _convert(capsys, CHECKPOINT, tmp_path / "out.safetensors", "--config", CONFIG)
    assert code == 2 and err == f"convert-checkpoint: error: {CHECKPOINT}: Permission denied\n"


@pytest.mark.parametrize("kind, message", [("folder", "cannot read the config file {}: Is a directory"),
                                           ("latin-1", "config file {} is not UTF-8 text")])
def test_an_unreadable_config_exits_2_naming_it(tmp_path, capsys, kind, message):
    config = tmp_path / "config.json"
    if kind == "folder":
        config.mkdir()
    else:
        config.write_bytes('{"D_MODEL": "\u00e9"}'.encode("latin-1"))
    code, err = _convert(capsys, CHECKPOINT, tmp_path / "out.safetensors", "--config", config)
    assert code == 2 and message.format(config) in err


@pytest.mark.parametrize("command", ["convert", "export"])
def test_an_output_folder_without_write_permission_names_the_output(tmp_path, capsys, monkeypatch, command):
    converted = tmp_path / "model.safetensors"
    convert_checkpoint(CHECKPOINT, converted, "language_mlm", json.loads(CONFIG.read_text()))
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    output = readonly / ("out.safetensors" if command == "convert" else "out.pickle")
    real_open = os.open

    def guarded_open(path, *args, **kwargs):  # as a folder without write permission would, for anyone but root
        if Path(path).parent == readonly:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    if command == "convert":
        code, err = _convert(capsys, CHECKPOINT, output, "--config", CONFIG)
    else:
        code, err = main(["export", str(converted), "-o", str(output)]), capsys.readouterr().err
    program = "convert-checkpoint" if command == "convert" else "convert-checkpoint export"
    assert code == 2 and err == f"{program}: error: cannot write {output}: Permission denied\n"
    assert list(readonly.iterdir()) == []


def test_export_creates_missing_folders(tmp_path, capsys):
    converted = tmp_path / "model.safetensors"
    assert _convert(capsys, CHECKPOINT, converted, "--config", CONFIG)[0] == 0
    output = tmp_path / "no" / "such" / "folder" / "model.pystate"
    assert main(["export", str(converted), "-o", str(output)]) == 0, capsys.readouterr().err
    assert output.is_file()


@pytest.mark.parametrize("raised, code, message", [(MemoryError(), 2, "convert-checkpoint: error: out of memory"),
                                                   (KeyboardInterrupt(), 130, "convert-checkpoint: interrupted")])
def test_out_of_memory_exits_2_and_ctrl_c_exits_130(tmp_path, capsys, monkeypatch, raised, code, message):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli, "convert_checkpoint", fail)
    assert _convert(capsys, CHECKPOINT, tmp_path / "out.safetensors", "--config", CONFIG) == (code, message + "\n")


def test_an_output_ending_in_a_separator_is_refused(tmp_path, capsys):
    code, err = _convert(capsys, CHECKPOINT, f"{tmp_path / 'new'}{os.sep}", "--config", CONFIG)
    assert code == 2 and "ends with a separator, so it names a folder" in err
    assert list(tmp_path.iterdir()) == []


def test_conflicting_modes_are_refused(capsys):
    assert main(["--list", "--example"]) == 2
    assert "--example and --list are different commands; give one" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--list", str(CHECKPOINT)])
    assert exited.value.code == 2 and f"error: unrecognized arguments: {CHECKPOINT}" in capsys.readouterr().err


STALLED_CONVERSION = """
import sys, time
from perceiver_io import checkpoint_file
from converters import cli

def stalled(out, tensors):  # the output's temporary file is open and written to: wait here for the signal
    out.write(b"partial")
    print("writing", flush=True)
    time.sleep(60)

checkpoint_file._write_tensors = stalled
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_conversion_stopped_by_a_signal_leaves_no_temporary_file(tmp_path, signum):
    folder = tmp_path / "out"
    folder.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_CONVERSION, str(CHECKPOINT), "-o", str(folder / "out.safetensors"),
         "--task", "language_mlm", "--config", str(CONFIG)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PERCEIVER_IO_CACHE": str(tmp_path / "cache")},
    )
    assert child.stdout.readline() == "writing\n", child.communicate()[1]
    assert len(list(folder.iterdir())) == 1  # the temporary file
    child.send_signal(signum)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 128 + signum, err
    assert list(folder.iterdir()) == []
