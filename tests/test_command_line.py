"""The command line and the package as a new user meets them: every command listed and helped, the
version, mistyped commands, output names that say their format, and the package's public names."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import perceiver_io
from converters.cli import COMMANDS, main
from perceiver_io.errors import ConfigError
from perceiver_io.registry import parse_config

from .conftest import GOLDEN

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = GOLDEN / "language_mlm" / "language_perceiver_io_bytes.pickle"
CONFIG = GOLDEN / "language_mlm" / "reduced_config.json"


def test_help_lists_every_command_and_each_has_its_own_help(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    listing = capsys.readouterr().out
    assert exited.value.code == 0
    for command in ("convert", "verify", "export", "download", "list", "example"):
        assert f"    {command} " in listing, command
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0 and f"usage: convert-checkpoint {command}" in capsys.readouterr().out
    assert set(COMMANDS) == {"convert", "verify", "export", "download", "list", "example"}


def test_the_version_is_the_installed_one(capsys):
    version = importlib.metadata.version("perceiver-io-port")
    assert perceiver_io.__version__ == version
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"convert-checkpoint {version}\n"


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "perceiver_io", "--version"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("convert-checkpoint ")


def test_a_reader_that_goes_away_stops_the_listing_quietly():
    listing = subprocess.Popen([sys.executable, "-m", "perceiver_io", "list"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    listing.stdout.close()  # as `| head -0` does
    _, err = listing.communicate(timeout=120)
    assert listing.returncode == 141 and err == b""


def test_a_mistyped_command_is_named_as_such(capsys):
    assert main(["veriffy", "x"]) == 2
    assert capsys.readouterr().err == ("convert-checkpoint: error: 'veriffy' is neither a command (convert, verify, "
                                       "export, download, list, example) nor a checkpoint file\n")


def test_no_command_prints_the_help(capsys):
    assert main([]) == 2 and "commands:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["convert", str(CHECKPOINT), "-o", "{tmp}/model.pt", "--task", "language_mlm"],
     "convert-checkpoint convert: error: -o {tmp}/model.pt: the file written is .safetensors"),
    ([str(CHECKPOINT), "-o", "{tmp}/model.bin", "--task", "language_mlm"],
     "convert-checkpoint: error: -o {tmp}/model.bin: the file written is .safetensors"),
    (["example", "-o", "{tmp}/example.pt"], "-o {tmp}/example.pt: the file written is .safetensors"),
    (["export", "{tmp}/model.safetensors", "-o", "{tmp}/model.pt"],
     "-o {tmp}/model.pt: the file written is .pickle or .pkl or .pystate or .npz"),
    (["verify", str(CHECKPOINT), "--task", "language_mlm", "--save-reference", "{tmp}/ref.json"],
     "--save-reference {tmp}/ref.json: the file written is .npz"),
    (["export", str(CHECKPOINT), "-o", "{tmp}/back.pickle"],
     f"{CHECKPOINT} is not a converted .safetensors file; export takes one"),
])
def test_an_output_name_must_say_its_format_and_export_takes_a_converted_file(argv, words, tmp_path, capsys):
    assert main([argument.format(tmp=tmp_path) for argument in argv]) == 2
    assert words.format(tmp=tmp_path) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_flags_of_earlier_versions_still_name_their_commands(tmp_path, capsys):
    assert main(["--list"]) == 0 and "language_mlm" in capsys.readouterr().out
    assert main(["--example", "-o", str(tmp_path / "example.safetensors")]) == 0
    assert (tmp_path / "example.safetensors").is_file()


def test_the_source_keeps_its_name_in_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.pickle"), "-o", str(tmp_path / "out.safetensors"), "--task",
                 "language_mlm", "--config", str(CONFIG)]) == 2
    assert f"{tmp_path / 'missing.pickle'}" in capsys.readouterr().err


def test_the_package_shows_its_public_names():
    names = dir(perceiver_io)
    for name in ("load", "save", "build_model", "fill_mask", "classify_image", "flow_between_files", "tiled_flow",
                 "reconstruct_video", "__version__"):
        assert name in names, name
    assert callable(perceiver_io.flow_between_files)


def test_a_config_error_names_the_task():
    with pytest.raises(ConfigError, match=r"^imagenet_conv\.encoder\.num_blocks: expected an integer in \[1, 1024\]"):
        parse_config("imagenet_conv", {**parse_config("imagenet_conv").to_official(),
                                       "encoder": {"num_blocks": 0}})
