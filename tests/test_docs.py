"""The README documents every command and every option of the CLI, and its set-up commands
are the ones CI runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from replverify.cli.main import main

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


ROOT = Path(__file__).resolve().parent.parent
TEST_SCRIPT = ROOT / "scripts" / "test"


def _fresh_machine_commands() -> list[str]:
    """The ``sh`` blocks of the README's "On a fresh machine" section, in order."""
    section = README.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_readme_test_command_is_what_ci_runs():
    demo, tests = _fresh_machine_commands()
    assert demo == "pip install . && replverify demo"
    assert tests == "scripts/test"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [
        line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    # Nothing after the command: its exit code and pytest's closing line are the job's.
    assert commands[-1] == tests
    assert commands[:-1] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."']


def test_the_test_script_installs_what_the_readme_says():
    assert os.access(TEST_SCRIPT, os.X_OK)
    script = TEST_SCRIPT.read_text(encoding="utf-8")
    for package in ("postgresql-15", "chromium"):
        assert f"`{package}`" in README and package in script
    assert "pip install -q -e '.[test]'" in script
    assert script.rstrip().splitlines()[-1] == 'exec python -m pytest "$@"'


def test_the_test_script_names_what_is_missing_when_it_cannot_install(tmp_path):
    """Without chromium, PostgreSQL and apt-get on PATH, it says what to install, exits 2,
    and runs nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run(
        [str(bin_dir / "bash"), str(TEST_SCRIPT)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "missing postgresql-15 chromium" in proc.stderr
    assert proc.stdout == ""
