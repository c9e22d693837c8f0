"""Configuration files: named profiles of option values in ``replverify.toml``.

::

    [profiles.prod]
    source = "${PROD_PRIMARY_DSN}"                  # DSNs from the environment ...
    target = "postgresql://app@db2.geo:5432/shop"   # ... or literal, but without a password
    rpo = 30
    tables = ["public.*"]

    [profiles.prod.reconcile]                       # for one command only
    journal = "/var/log/app/journal.jsonl"

A profile's top-level keys apply to every command that has that option or argument; a
``[profiles.NAME.COMMAND]`` table applies to that command only and overrides them; what
is given on the command line overrides both. The keys are the commands' parameters,
which the CLI hands over as a :data:`Schema`: there is one list of options, the CLI's.

Checked when the file is loaded, for every profile, with all problems reported at once:
unknown keys (with the nearest known one), values of the wrong type or range, and
passwords written into a DSN. ``${VAR}`` is expanded when a value is used
(:meth:`Value.resolve`), so a variable has to be set only for the values a run takes
from the profile, and an unset one is an error naming it.

Free of I/O apart from reading the file (:func:`load`) and looking for it
(:func:`discover`).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from replverify.db.connect import written_passwords
from replverify.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE",
    "DSN_PARAMS",
    "PROFILE_ENV",
    "Config",
    "Param",
    "Profile",
    "Schema",
    "Value",
    "discover",
    "expand",
    "has_literal_password",
    "load",
    "parse",
]

#: The file looked for in the current directory.
CONFIG_FILE = "replverify.toml"
#: Environment variables naming the file and the profile (as --config and --profile).
CONFIG_ENV = "REPLVERIFY_CONFIG"
PROFILE_ENV = "REPLVERIFY_PROFILE"

#: Parameters holding connection strings: a password must not be written into them.
DSN_PARAMS = frozenset({"source", "target", "old", "new"})

Kind = Literal["str", "int", "float", "bool"]

_KIND_NAMES: dict[Kind, str] = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
}
_KIND_PLURALS: dict[Kind, str] = {
    "str": "strings",
    "int": "integers",
    "float": "numbers",
    "bool": "booleans",
}

# ``${NAME}`` is a reference, ``$${`` a literal ``${``; any other ``${`` is a mistake.
_REF = re.compile(r"\$(\$)?\{(?:([A-Za-z_][A-Za-z0-9_]*)\})?")
# Stands in for a ``${VAR}`` while looking for a password written into a DSN.
_HOLE = "\x00"


@dataclass(frozen=True)
class Param:
    """A parameter of a command that a profile may set.

    ``name`` is the command's parameter name (what the value is handed to); ``check``,
    if given, returns a problem with a non-string value (e.g. out of range) or None.
    ``shared=False``: the key means something else in another command, so a profile
    may set it only in this command's own table.
    """

    name: str
    kind: Kind = "str"
    multiple: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[object], str | None] | None = field(default=None, compare=False)
    shared: bool = True
    #: the command takes this key from its own table only, never from the shared keys
    #: (``files``: storage locations, not the profile's DSNs; its own ``--rpo``)
    own_table_only: bool = False


#: command name -> config key -> parameter.
Schema = Mapping[str, Mapping[str, Param]]


@dataclass(frozen=True)
class Value:
    """A value of a profile as written; its strings may hold ``${VAR}`` references."""

    raw: object
    #: Where it was written, for messages: ``replverify.toml: profiles.prod.target``.
    where: str

    def resolve(self, environ: Mapping[str, str] | None = None) -> object:
        """The value with ``${VAR}`` expanded from ``environ`` (default: ``os.environ``);
        lists become tuples."""
        env = os.environ if environ is None else environ
        if isinstance(self.raw, str):
            return expand(self.raw, env, self.where)
        if isinstance(self.raw, tuple):
            return tuple(expand(v, env, self.where) if isinstance(v, str) else v for v in self.raw)
        return self.raw

    @property
    def refers(self) -> bool:
        """Does the value name an environment variable (``${VAR}``)?"""
        items = self.raw if isinstance(self.raw, tuple) else (self.raw,)
        return any(isinstance(v, str) and _has_reference(v) for v in items)

    def __call__(self) -> object:
        """:meth:`resolve` from ``os.environ`` (click calls a callable default when it
        needs the value, so an unset variable matters only then)."""
        return self.resolve()

    def __str__(self) -> str:
        """As written (``--help`` shows it as the default)."""
        items = self.raw if isinstance(self.raw, tuple) else (self.raw,)
        return ", ".join(map(str, items))


@dataclass(frozen=True)
class Profile:
    """One ``[profiles.NAME]``: per command, the parameter values it supplies."""

    name: str
    path: str
    #: command -> parameter name -> value (shared keys merged with the command's table).
    commands: Mapping[str, Mapping[str, Value]]


@dataclass(frozen=True)
class Config:
    """A loaded, checked configuration file."""

    path: str
    profiles: Mapping[str, Profile]

    def profile(self, name: str) -> Profile:
        """The profile ``name``; the error lists the profiles there are."""
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"{self.path}: no profile {name!r} (profiles: {known})") from None


# ======================================================================= ${VAR}


def expand(text: str, environ: Mapping[str, str], where: str) -> str:
    """``text`` with every ``${NAME}`` replaced by ``environ[NAME]`` and ``$${`` by ``${``.

    An unset variable is a :class:`~replverify.errors.ConfigError` naming it and
    ``where``; a set but empty one expands to the empty string.
    """

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(0)[1:]
        name = m.group(2)
        if name is None:
            raise ConfigError(f"{where}: '${{' must start a ${{NAME}} reference")
        if name not in environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return environ[name]

    return _REF.sub(sub, text)


def _bad_reference(text: str) -> bool:
    return any(not m.group(1) and m.group(2) is None for m in _REF.finditer(text))


def _has_reference(text: str) -> bool:
    return any(m.group(2) for m in _REF.finditer(text))


def has_literal_password(dsn: str) -> bool:
    """Does ``dsn``, as written in the file, hold a password: ``user:secret@`` or
    ``?password=`` in a URL, ``password=`` in key/value form? A password given only as
    ``${VAR}`` is not written in the file and does not count."""

    def hole(m: re.Match[str]) -> str:
        if m.group(2):
            return _HOLE
        return m.group(0)[1:] if m.group(1) else m.group(0)

    return any(v.replace(_HOLE, "") for v in written_passwords(_REF.sub(hole, dsn)))


# ======================================================================= checking


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _fits(value: object, kind: Kind) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problem(value: object, param: Param, loc: str) -> str | None:
    """What is wrong with ``value`` for ``param`` (never echoing a DSN), or None."""
    if param.multiple:
        if not isinstance(value, list):
            plural = _KIND_PLURALS[param.kind]
            return f"{loc}: must be a list of {plural}, not {_toml_type(value)}"
        items: list[object] = value
    else:
        items = [value]
    for item in items:
        if not _fits(item, param.kind):
            return f"{loc}: must be {_KIND_NAMES[param.kind]}, not {_toml_type(item)}"
        if isinstance(item, str):
            if _bad_reference(item):
                return f"{loc}: '${{' must start a ${{NAME}} reference ($${{ for a literal one)"
            if param.name in DSN_PARAMS and has_literal_password(item):
                return (
                    f"{loc}: a password is written in this DSN; keep it out of the file: "
                    "take the DSN from the environment (${VAR}) or the password from "
                    "PGPASSWORD or ~/.pgpass"
                )
            if param.choices and not _has_reference(item) and item not in param.choices:
                return f"{loc}: must be one of {', '.join(param.choices)}, not {item!r}"
        elif param.check is not None and (problem := param.check(item)):
            return f"{loc}: {problem}"
    return None


def _unknown(loc: str, key: str, known: set[str], what: str) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{loc}: unknown key: not {what}{hint}"


def _value(raw: object, loc: str, path: str) -> Value:
    return Value(tuple(raw) if isinstance(raw, list) else raw, f"{path}: {loc}")


def _profile(
    name: str, body: Mapping[str, object], path: str, schema: Schema, problems: list[str]
) -> Profile:
    every_key = {key for params in schema.values() for key in params}
    commands: dict[str, dict[str, Value]] = {cmd: {} for cmd in schema}
    own: dict[str, Mapping[str, object]] = {}
    for key, raw in body.items():
        loc = f"profiles.{name}.{key}"
        if key in schema:
            if isinstance(raw, dict):
                own[key] = raw
            else:
                problems.append(f"{loc}: must be a table of {key} options ([{loc}])")
            continue
        if key not in every_key:
            problems.append(_unknown(loc, key, every_key | set(schema), "an option or command"))
            continue
        takers = [c for c, ps in schema.items() if key in ps and not ps[key].own_table_only]
        if not takers:
            only = " or ".join(f"[profiles.{name}.{c}]" for c, ps in schema.items() if key in ps)
            problems.append(f"{loc}: an option of one command only: set it in {only}")
            continue
        if not all(schema[cmd][key].shared for cmd in takers):
            tables = " or ".join(f"[profiles.{name}.{cmd}]" for cmd in takers)
            problems.append(
                f"{loc}: means different things for {' and '.join(takers)}: set it in {tables}"
            )
            continue
        for cmd in takers:
            param = schema[cmd][key]
            if problem := _problem(raw, param, loc):
                problems.append(problem)
            else:
                commands[cmd][param.name] = _value(raw, loc, path)
    # A command's own table overrides the shared keys.
    for cmd, table in own.items():
        params = schema[cmd]
        for key, raw in table.items():
            loc = f"profiles.{name}.{cmd}.{key}"
            if key not in params:
                problems.append(_unknown(loc, key, set(params), f"an option of {cmd}"))
            elif problem := _problem(raw, params[key], loc):
                problems.append(problem)
            else:
                commands[cmd][params[key].name] = _value(raw, loc, path)
    return Profile(name, path, {cmd: vals for cmd, vals in commands.items() if vals})


def parse(text: str, path: str, schema: Schema) -> Config:
    """Parse and check the TOML ``text`` of the file ``path`` against ``schema``.

    Every problem of every profile is reported in one
    :class:`~replverify.errors.ConfigError`; TOML syntax errors give the line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    problems: list[str] = []
    for key in doc:
        if key != "profiles":
            problems.append(f"{key}: unknown key: the file holds [profiles.NAME] tables")
    raw_profiles = doc.get("profiles", {})
    profiles: dict[str, Profile] = {}
    if not isinstance(raw_profiles, dict):
        problems.append("profiles: must be a table of profiles ([profiles.NAME])")
        raw_profiles = {}
    for name, body in raw_profiles.items():
        if isinstance(body, dict):
            profiles[name] = _profile(name, body, path, schema, problems)
        else:
            problems.append(f"profiles.{name}: must be a table ([profiles.{name}])")
    if problems:
        # A shared key can fail the same way for several commands: say it once.
        raise ConfigError(f"{path}: " + "; ".join(dict.fromkeys(problems)))
    return Config(path, profiles)


def load(path: str | os.PathLike[str], schema: Schema) -> Config:
    """Read and :func:`parse` the configuration file ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8") from None
    return parse(text, str(path), schema)


def discover(cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """``replverify.toml`` in ``cwd`` (default: the current directory), if there is one."""
    candidate = Path(CONFIG_FILE) if cwd is None else Path(cwd) / CONFIG_FILE
    return candidate if candidate.is_file() else None
