"""What every command writes: the report (to standard output or ``--output``, coloured
from its tones on a terminal), and errors, one line on stderr with their exit code.

Exit codes come from the :class:`~replverify.errors.ReplverifyError` here; the commands
decide a report's code themselves."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from replverify.errors import OutputError, ReplverifyError
from replverify.reports.formats import Renderers
from replverify.reports.formatting import Marks, Tone

T = TypeVar("T")
R = TypeVar("R")


def write_file(path: str, text: str, what: str) -> None:
    """Write ``text`` to ``path``; a failure (a full disk, a file gone) is trouble (exit 2)
    with the reason, never an exit code that reads as a verdict."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write {what} to {path}: {e.strerror}") from None


def emit(text: str, output: str | None, marked: Callable[[Marks], str] | None = None) -> None:
    """Write a rendered report to ``output`` or standard output; the text format gets its
    verdicts coloured on a terminal (see :func:`use_color`): ``marked(marks)`` renders the
    same text with its verdicts marked by ``marks``."""
    if output:
        write_file(output, text, "the report")
        return
    ctx = click.get_current_context(silent=True)
    try:
        text_format = ctx is not None and ctx.params.get("fmt", "text") == "text"
        if marked is not None and text_format and use_color():
            click.echo(marked(TERMINAL), nl=False, color=True)
        else:
            click.echo(text, nl=False)
        sys.stdout.flush()
    except OSError as e:
        _discard_stdout()
        raise OutputError(f"cannot write the report to standard output: {e.strerror}") from None


def _discard_stdout() -> None:
    """After a failed write to stdout, send what is still buffered to /dev/null: Python's
    own flush at exit would fail again and turn the exit code into 120."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def use_color() -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
    return not os.environ.get("NO_COLOR") and stdout_is_terminal()


#: A tone's colour on a terminal: green verified, red a problem found, yellow could not
#: tell; a report without a verdict (``info``) stays plain.
TONE_COLORS: dict[Tone, str | None] = {"ok": "green", "bad": "red", "warn": "yellow", "info": None}


def _color_word(text: str, tone: Tone) -> str:
    color = TONE_COLORS[tone]
    return click.style(text, fg=color) if color else text


def _color_line(text: str, tone: Tone) -> str:
    color = TONE_COLORS[tone]
    return click.style(text, fg=color, bold=True) if color else text


#: How text reports mark their verdicts on a terminal: a word coloured, the verdict line
#: coloured and bold, each from its tone (the renderers decide the tone, not the words).
TERMINAL = Marks(item=_color_word, verdict=_color_line)


def emit_report(renderers: Renderers[R], fmt: str, report: R, output: str | None) -> None:
    """Render ``report`` as ``fmt`` and :func:`emit` it (coloured from its tones where
    :func:`emit` colours)."""
    emit(renderers[fmt](report), output, lambda marks: renderers.marked(report, marks))


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; turn our errors into a message and exit code 2 (never a traceback)."""
    try:
        return asyncio.run(coro)
    except ReplverifyError as e:
        fail(e)
    except KeyboardInterrupt:
        click.echo("replverify: interrupted", err=True)
        sys.exit(130)


def fail(error: ReplverifyError) -> NoReturn:
    """Report ``error`` in one line (plus its hint) on stderr and exit with its code."""
    click.echo(f"replverify: error: {error}", err=True)
    sys.exit(error.exit_code)
