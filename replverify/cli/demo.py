"""``replverify demo``: a local primary and standby, a failover with real loss, and the
reports of it (:mod:`replverify.testing.demo` does the work)."""

from __future__ import annotations

import sys

import click

from replverify.cli.console import run_async


@click.command()
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the clusters running; print their DSNs and the commands that stop them.",
)
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=20_000,
    show_default=True,
    help="Rows of sample data.",
)
def demo(keep: bool, rows: int) -> None:
    """Start a local primary + standby, fail over with real loss, and show the reports.

    Needs the PostgreSQL 15 server binaries (pg_config --bindir). Everything runs in a
    temporary directory on loopback ports and is removed afterwards (unless --keep).
    """
    from replverify.testing.demo import run_demo

    sys.exit(run_async(run_demo(rows=rows, keep=keep, echo=click.echo)))
