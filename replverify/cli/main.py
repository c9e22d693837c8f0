"""The ``replverify`` root group: its options (``--profile``, ``--config``,
``--verbose``), the profile defaults it gives each command, and the one place an error
no command handles becomes a message and exit 2. The commands live in their own modules
and are registered here, in the order profiles list them.

Exit codes (as diff(1)): 0 verified, 1 differences, 2 trouble. Each command decides its
own from its report; an error is decided by the :class:`~replverify.errors.ReplverifyError`.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from replverify import __version__
from replverify.cli import logs
from replverify.cli.console import fail
from replverify.cli.demo import demo
from replverify.cli.diff import diff
from replverify.cli.failover import failback, gate, health
from replverify.cli.files import files
from replverify.cli.lag import lag
from replverify.cli.reconcile import reconcile
from replverify.errors import EXIT_TROUBLE, ConfigError, ReplverifyError

if TYPE_CHECKING:
    from replverify.cli.config import Param


class ReplverifyGroup(click.Group):
    """The ``replverify`` group: an error of ours that no command handles itself (a bad
    configuration file, an unset ``${VAR}`` of the profile, a metrics port in use) is one
    line on stderr and its exit code (2), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReplverifyError as e:
            fail(e)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:
            # A bug, not a user mistake: keep the traceback for the report, and exit 2
            # (Python's default 1 would read as "differences found").
            traceback.print_exc()
            click.echo(
                "replverify: internal error: this is a bug in replverify; please report it "
                "with the traceback above",
                err=True,
            )
            sys.exit(EXIT_TROUBLE)


def config_key(param: click.Parameter) -> str:
    """The key of ``param`` in a profile: an option's long name with ``_`` for ``-``
    (``--chunk-rows``: ``chunk_rows``, ``--format``: ``format``), an argument's name,
    and for a repeatable option its parameter name (``-t/--table``: ``tables``)."""
    assert param.name is not None
    if isinstance(param, click.Option) and not param.multiple:
        longs = [o for o in param.opts if o.startswith("--")]
        if longs:
            return longs[0][2:].replace("-", "_")
    return param.name


#: Profile keys that mean different things in different commands: only in a command's
#: own table. (``fence = true`` meant for diff's fenced reads must not make gate fence
#: the source.)
CONFIG_COMMAND_ONLY = frozenset({"fence", "replay_sql"})
#: Commands that take no shared profile keys, only their own table: ``files`` compares
#: storage locations, not the profile's DSNs, and its ``--rpo`` judges a blob account.
CONFIG_OWN_TABLE_ONLY = frozenset({"files"})


def config_schema(group: click.Group) -> dict[str, dict[str, Param]]:
    """What each command accepts in a profile, from its click parameters (one list of
    options: the CLI's)."""
    from replverify.cli.config import Kind, Param

    def describe(p: click.Parameter, own_table_only: bool) -> Param:
        assert p.name is not None
        t = p.type
        kind: Kind
        if isinstance(t, click.types.BoolParamType):
            kind = "bool"
        elif isinstance(t, click.types.IntParamType):
            kind = "int"
        elif isinstance(t, click.types.FloatParamType):
            kind = "float"
        else:
            kind = "str"

        def check(value: object) -> str | None:
            try:
                t.convert(value, p, None)
            except click.BadParameter as e:
                return e.message.rstrip(".")
            return None

        choices = tuple(map(str, t.choices)) if isinstance(t, click.Choice) else ()
        numeric = kind in ("int", "float")
        shared = config_key(p) not in CONFIG_COMMAND_ONLY
        check_ = check if numeric else None
        return Param(p.name, kind, p.multiple, choices, check_, shared, own_table_only)

    return {
        name: {
            config_key(p): describe(p, name in CONFIG_OWN_TABLE_ONLY)
            for p in command.params
            if p.name
        }
        for name, command in group.commands.items()
    }


def profile_defaults(
    group: click.Group, profile: str, config_file: str | None
) -> dict[str, dict[str, object]]:
    """``ctx.default_map`` for ``profile``: per command, per parameter, the value; one
    that names ``${VAR}`` is given as a callable, which click calls only for what the
    command line leaves out, so an unset variable matters only when its value is used."""
    from replverify.cli.config import CONFIG_ENV, CONFIG_FILE, discover, load

    path = Path(config_file) if config_file else discover()
    if path is None:
        raise ConfigError(
            f"--profile {profile}: no {CONFIG_FILE} in the current directory; "
            f"name the file with --config FILE or ${CONFIG_ENV}"
        )
    chosen = load(path, config_schema(group)).profile(profile)
    return {
        command: {
            name: value if value.refers else value.resolve() for name, value in values.items()
        }
        for command, values in chosen.commands.items()
    }


@click.group(
    cls=ReplverifyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="replverify")
@click.option(
    "--profile",
    metavar="NAME",
    envvar="REPLVERIFY_PROFILE",
    show_envvar=True,
    help="Take DSNs and option values from profile NAME of the configuration file; "
    "what the command line gives overrides them.",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    envvar="REPLVERIFY_CONFIG",
    show_envvar=True,
    help="The configuration file of --profile.  [default: ./replverify.toml]",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    envvar="REPLVERIFY_VERBOSE",
    show_envvar=True,
    help="Details on stderr: replverify's debug log, the libraries' (asyncpg) log "
    "records and their tracebacks, which are otherwise never shown.",
)
@click.pass_context
def main(ctx: click.Context, profile: str | None, config_file: str | None, verbose: bool) -> None:
    """Verify PostgreSQL replication and find exactly the data a failover lost.

    DSNs are libpq URLs (postgresql://user@host:port/db) or key=value strings; the
    standard PG* environment variables apply. Passwords never appear in output.

    With --profile NAME, DSNs and options come from [profiles.NAME] of replverify.toml
    (see README, Configuration); the command line overrides them.

    Exit codes: 0 verified, 1 differences found, 2 trouble (bad arguments, unreachable
    server, something that could not be checked).
    """
    logs.configure(verbose=verbose)
    if profile is not None:
        ctx.default_map = profile_defaults(main, profile, config_file)
    elif ctx.get_parameter_source("config_file") is click.core.ParameterSource.COMMANDLINE:
        from replverify.cli.config import load

        names = ", ".join(sorted(load(config_file or "", config_schema(main)).profiles))
        raise ConfigError(f"--config {config_file}: choose a profile with --profile ({names})")


for command in (diff, demo, lag, reconcile, gate, failback, health, files):
    main.add_command(command)
