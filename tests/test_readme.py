"""The README stays true: every `convert-checkpoint` command it shows parses with today's command line,
every script it runs exists, and its first Python snippet runs as written after the main job."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from converters.cli import _parser, _with_command

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)
"""(language, text) of every code block."""


def _shell_commands() -> list[str]:
    """Every command of the README's shell blocks and shown sessions (`$ ...`), continuation lines joined."""
    commands = []
    for language, text in BLOCKS:
        if language not in ("bash", ""):
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            commands += [part.strip() for part in line.split("&&")]
    return [command for command in commands if command.startswith(("convert-checkpoint", "python3 "))]


CLI_COMMANDS = [command for command in _shell_commands() if command.startswith("convert-checkpoint")]


def test_the_readme_shows_the_commands():
    assert len(CLI_COMMANDS) >= 10 and "convert-checkpoint example --force" in CLI_COMMANDS


@pytest.mark.parametrize("command", CLI_COMMANDS)
def test_every_command_line_in_the_readme_parses(command):
    argv = shlex.split(command, comments=True)[1:]
    args = _parser().parse_args(_with_command(argv))
    assert args.command is not None


@pytest.mark.parametrize("command", [c for c in _shell_commands() if c.startswith("python3 scripts/")])
def test_every_script_the_readme_runs_exists(command):
    assert (ROOT / shlex.split(command, comments=True)[1]).is_file(), command


def test_the_first_python_snippet_runs_after_the_main_job(tmp_path):
    """The set-up's main job, then the README's first Python block, in a fresh folder, as a user runs them."""
    main_job = subprocess.run([sys.executable, "-m", "perceiver_io", "example"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
    assert main_job.returncode == 0, main_job.stderr
    snippet = next(text for language, text in BLOCKS if language == "python")
    assert "language_mlm_example.safetensors" in snippet
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("This is an incomplete sentence where some words are")
