"""`--help` works for the top level and every subcommand at every depth (argparse %-formats help text)."""

import argparse
import subprocess
import sys

import pytest

from rlhfkit.cli import build_parser


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(command_paths(sub, (*path, name)))
    return paths


def test_every_subcommand_prints_its_help(capsys):
    paths = command_paths(build_parser())
    assert ("label", "semi-ai", "send") in paths and len(paths) > 20
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert capsys.readouterr().out.startswith("usage:"), path


def test_the_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "rlhfkit", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
