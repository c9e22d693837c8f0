"""Option blocks more than one command shares, and the checks of option values that
must fail before any server is contacted (a file to write that cannot be written)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = click.Choice(["text", "json", "markdown", "html"])


def unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written, or None; checked before the long work starts so
    that a run's report is never lost at its end. Changes nothing on disk."""
    p = Path(path)
    if p.exists():
        if p.is_dir():
            return f"{path} is a directory"
        try:  # appending nothing proves it opens for writing (a report, /dev/full)
            with p.open("a", encoding="utf-8"):
                pass
        except OSError as e:
            return f"cannot write {path}: {e.strerror}"
        return None
    parent = p.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    try:  # an unnamed file: what creating one needs (permission, a writable file system)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        return f"cannot create files in {parent}: {e.strerror}"
    return None


def check_writable(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback of every option naming a file to write: a usage error (exit 2) with
    the reason, before any server is contacted."""
    if value is not None and (problem := unwritable(value)) is not None:
        raise click.BadParameter(problem)
    return value


def output_options(f: F) -> F:
    f = click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False),
        callback=check_writable,
        help="Write the report to FILE instead of standard output.",
    )(f)
    f = click.option(
        "--format",
        "fmt",
        type=FORMATS,
        default="text",
        show_default=True,
        help="Report format; html is one self-contained page (no scripts, nothing loaded).",
    )(f)
    return f


def scale_options(f: F) -> F:
    """``--executor`` and the throttling options of ``diff`` and ``gate`` (docs/dask.md)."""
    options = [
        click.option(
            "--executor",
            default="inprocess",
            show_default=True,
            metavar="inprocess|local:N|dask://HOST:PORT",
            help="Where chunk work runs: this process, a local cluster of N worker "
            "processes, or a running Dask scheduler. Needs: pip install 'replverify[dask]' "
            "(except inprocess). Workers connect with their own credentials (PGPASSWORD, "
            "PGPASSFILE, PGSERVICE); no password is sent to them.",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=2),
            metavar="N",
            help="Connections per server, all workers together (checked against the "
            "server's max_connections and the connections in use).",
        ),
        click.option(
            "--max-load",
            type=click.IntRange(min=0),
            metavar="N",
            help="Pause new reads while the source has more than N active backends "
            "(other than replverify's own).",
        ),
        click.option(
            "--max-lag",
            type=click.FloatRange(min=0),
            metavar="SECONDS",
            help="Pause new reads while the standby's replay lag exceeds SECONDS.",
        ),
        click.option(
            "--chunk-time",
            type=click.FloatRange(min=0),
            default=0.5,
            show_default=True,
            metavar="SECONDS",
            help="Adapt the chunk size towards SECONDS per chunk; 0, or an explicit "
            "--chunk-rows, keeps chunks at a fixed size.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def scale_settings(
    ctx: click.Context,
    executor: str,
    max_connections: int | None,
    max_load: int | None,
    max_lag: float | None,
    chunk_time: float,
) -> dict[str, Any]:
    """The DiffOptions of :func:`scale_options`. An explicit --chunk-rows fixes the chunk
    size, as pt-table-checksum's --chunk-size does."""
    explicit = ctx.get_parameter_source("chunk_rows") not in (
        None,
        click.core.ParameterSource.DEFAULT,
    )
    return {
        "executor": executor,
        "max_connections": max_connections,
        "max_load": max_load,
        "max_lag": max_lag,
        "chunk_time": None if explicit or not chunk_time else chunk_time,
    }
