"""The README documents every command and every option of the CLI."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from replverify.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_and_option_is_in_the_readme(name):
    command = main.commands[name]
    assert f"replverify {name}" in README
    for param in command.params:
        if isinstance(param, click.Option):
            longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
            assert any(o in README for o in longs), f"{name} {longs} is not documented"
            assert param.help, f"{name} {longs} has no --help text"


def test_every_option_of_the_group_is_in_the_readme():
    for param in main.params:
        if isinstance(param, click.Option):
            longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
            assert any(o in README for o in longs), f"replverify {longs} is not documented"
            assert param.help, f"replverify {longs} has no --help text"
