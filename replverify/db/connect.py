"""DSNs, password redaction, and asyncpg pools with pinned session settings.

Every connection replverify opens is read-only and runs each statement in a
``repeatable read`` snapshot, and pins the settings that change how values print
(TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output), so both sides
of a comparison encode the same value the same way whatever their server defaults.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from replverify.errors import ConnectError, ReplverifyError, ServerError, UsageError

#: Session settings that make text output identical on both sides, and reads safe.
PINNED_SETTINGS: Mapping[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "default_transaction_read_only": "on",
    "default_transaction_isolation": "repeatable read",
    "application_name": "replverify",
}

_KV_KEYS = {
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "passfile",
    "service",
    "target_session_attrs",
    "options",
}
#: A value in key=value form: single-quoted (backslash escapes inside) or up to a space.
_KV_VALUE = r"('(?:[^'\\]|\\.)*'|\S*)"
_KV_RE = re.compile(r"\s*([A-Za-z_]+)\s*=\s*" + _KV_VALUE)
_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*" + _KV_VALUE)


def written_passwords(dsn: str) -> list[str]:
    """Every password written in ``dsn``, in order, empty ones included: ``user:secret@``
    and ``?password=`` of a URL, ``password=`` of key/value form (quotes stripped).

    Nothing else of the DSN is checked, so it also reads what :meth:`Endpoint.parse`
    refuses (host lists, ``${VAR}`` references in a configuration file).
    """
    dsn = dsn.strip()
    if not dsn.startswith(("postgresql://", "postgres://")):
        return [m.group(1).strip("'") for m in _KV_PASSWORD.finditer(dsn)]
    # By hand rather than urlsplit, which refuses some URLs libpq takes (host lists).
    rest = dsn.split("://", 1)[1]
    userinfo = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[0]
    found = [userinfo.partition(":")[2]] if ":" in userinfo else []
    query = rest.partition("?")[2].partition("#")[0]
    return found + [v for k, v in urllib.parse.parse_qsl(query) if k == "password"]


@dataclass(frozen=True)
class Endpoint:
    """A parsed DSN. ``str()``/``repr()`` never show the password."""

    raw: str = field(repr=False)
    kwargs: tuple[tuple[str, Any], ...] = field(repr=False, default=())
    display: str = ""
    secret: str | None = field(repr=False, default=None)

    @classmethod
    def parse(cls, dsn: str) -> Endpoint:
        """Parse a libpq URL (``postgresql://…``) or ``key=value`` string; ``""`` uses PG*."""
        dsn = dsn.strip()
        if dsn.startswith(("postgresql://", "postgres://")):
            return cls._from_url(dsn)
        if dsn == "" or "=" in dsn:
            return cls._from_keywords(dsn)
        raise UsageError(
            f"not a connection string: {redact_text(dsn)!r}",
            hint="use postgresql://user@host:port/db or 'host=... dbname=...'",
        )

    @classmethod
    def _from_url(cls, dsn: str) -> Endpoint:
        try:
            url = urllib.parse.urlsplit(dsn)
            _ = url.port
        except ValueError as e:
            raise UsageError(f"bad connection URL {redact_text(dsn)!r}: {e}") from None
        secret = next(filter(None, written_passwords(dsn)), None)
        netloc = url.hostname or ""
        if url.hostname and ":" in url.hostname:
            netloc = f"[{url.hostname}]"
        if url.port:
            netloc += f":{url.port}"
        if url.username:
            netloc = f"{urllib.parse.unquote(url.username)}@{netloc}"
        kept = [(k, v) for k, v in urllib.parse.parse_qsl(url.query) if k != "password"]
        display = urllib.parse.urlunsplit(
            ("postgresql", netloc, url.path, urllib.parse.urlencode(kept), "")
        )
        return cls(raw=dsn, kwargs=(("dsn", dsn),), display=display, secret=secret)

    @classmethod
    def _from_keywords(cls, dsn: str) -> Endpoint:
        params: dict[str, str] = {}
        pos = 0
        while pos < len(dsn):
            m = _KV_RE.match(dsn, pos)
            if not m or not m.group(0).strip():
                raise UsageError(f"cannot parse connection string near {dsn[pos : pos + 20]!r}")
            key, value = m.group(1), m.group(2)
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if key not in _KV_KEYS:
                raise UsageError(f"unknown connection parameter {key!r}")
            params[key] = value
            pos = m.end()
        kwargs: dict[str, Any] = {}
        if "hostaddr" in params and "host" not in params:
            params["host"] = params["hostaddr"]
        for src, dst in (
            ("host", "host"),
            ("user", "user"),
            ("password", "password"),
            ("dbname", "database"),
            ("passfile", "passfile"),
            ("service", "service"),
            ("target_session_attrs", "target_session_attrs"),
        ):
            if src in params:
                kwargs[dst] = params[src]
        if "port" in params:
            try:
                kwargs["port"] = int(params["port"])
            except ValueError:
                raise UsageError(f"port must be a number, not {params['port']!r}") from None
        if "sslmode" in params:
            kwargs["ssl"] = params["sslmode"]
        if "connect_timeout" in params:
            kwargs["timeout"] = float(params["connect_timeout"])
        host = params.get("host") or os.environ.get("PGHOST", "")
        port = params.get("port") or os.environ.get("PGPORT", "")
        user = params.get("user") or os.environ.get("PGUSER", "")
        db = params.get("dbname") or os.environ.get("PGDATABASE", "")
        netloc = (f"{user}@" if user else "") + host + (f":{port}" if port else "")
        display = f"postgresql://{netloc}/{db}"
        return cls(
            raw=dsn, kwargs=tuple(kwargs.items()), display=display, secret=params.get("password")
        )

    def without_secret(self) -> Endpoint:
        """The same endpoint with no password in it: safe to store, log or ship to a
        worker, which then authenticates with its own means (PGPASSWORD, .pgpass, ...)."""
        if self.secret is None:
            return self
        kw = dict(self.kwargs)
        if "dsn" in kw:
            url = urllib.parse.urlsplit(kw["dsn"])
            netloc = url.netloc.rsplit("@", 1)
            user = netloc[0].split(":", 1)[0] if len(netloc) == 2 else ""
            host = netloc[-1]
            query = urllib.parse.urlencode(
                [(k, v) for k, v in urllib.parse.parse_qsl(url.query) if k != "password"]
            )
            clean = urllib.parse.urlunsplit(
                (url.scheme, f"{user}@{host}" if user else host, url.path, query, "")
            )
            return Endpoint(raw=clean, kwargs=(("dsn", clean),), display=self.display)
        kw.pop("password", None)
        return Endpoint(raw=self.display, kwargs=tuple(kw.items()), display=self.display)

    @property
    def address(self) -> str:
        """``host:port`` as the connection will try it (for error messages)."""
        kw = dict(self.kwargs)
        if "dsn" in kw:
            url = urllib.parse.urlsplit(kw["dsn"])
            host, port = url.hostname, url.port
        else:
            host, port = kw.get("host"), kw.get("port")
        host = host or os.environ.get("PGHOST") or "localhost"
        port = port or os.environ.get("PGPORT") or 5432
        return f"{host}:{port}"

    def scrub(self, text: str) -> str:
        """Remove this endpoint's password from ``text``."""
        text = redact_text(text)
        if self.secret:
            text = text.replace(self.secret, "***")
        return text

    def __str__(self) -> str:
        return self.display


#: What a database call raises when the server refuses or the connection breaks. asyncpg
#: raises InternalClientError, not InterfaceError, for a query sent on a connection the
#: server has just terminated.
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)
#: The same, or a connection attempt that timed out.
DB_OR_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncio.TimeoutError)


def trouble(exc: BaseException, *endpoints: Endpoint) -> ReplverifyError:
    """The replverify error for a server refusal or a lost connection, passwords removed.

    ``raise trouble(e, src, tgt) from e`` in an ``except DB_ERRORS``.
    """
    text = str(exc)
    for ep in endpoints:
        text = ep.scrub(text)
    text = redact_text(text)
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc, asyncpg.exceptions.PostgresConnectionError
    ):
        return ServerError(text, sqlstate=exc.sqlstate)
    return ConnectError(f"connection lost: {text}")


def redact_text(text: str) -> str:
    """Hide passwords in anything that looks like a DSN inside ``text``."""
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # asyncpg's default interval codec folds a year into 365 days, which PostgreSQL's
    # interval equality does not; keep the raw (months, days, microseconds) triple.
    await conn.set_type_codec(
        "interval",
        schema="pg_catalog",
        encoder=lambda v: v,
        decoder=lambda v: v,
        format="tuple",
    )


def _connect_kwargs(endpoint: Endpoint) -> dict[str, Any]:
    kw = dict(endpoint.kwargs)
    kw.setdefault("timeout", 15.0)
    kw["server_settings"] = dict(PINNED_SETTINGS)
    return kw


def _password_hint(endpoint: Endpoint) -> str | None:
    """For a refused password login when none was given: where libpq-style clients
    (asyncpg too) look for one. asyncpg sends an empty password rather than saying that
    none was found, so the server's "authentication failed" hides the cause."""
    if endpoint.secret is not None or os.environ.get("PGPASSWORD"):
        return None
    passfile = os.environ.get("PGPASSFILE") or os.path.join("~", ".pgpass")
    return (
        "neither the DSN nor PGPASSWORD gives a password: set PGPASSWORD, or put a line "
        f"host:port:database:user:password in {passfile} (mode 0600); passwords never "
        "appear in replverify's output"
    )


def _explain(endpoint: Endpoint, exc: BaseException) -> ConnectError:
    hint = None
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        reason = f"login refused: {exc}"
        if isinstance(exc, asyncpg.InvalidPasswordError):
            hint = _password_hint(endpoint)
    elif isinstance(exc, socket.gaierror):
        reason = f"unknown host ({exc.strerror})"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused (is the server running and listening there?)"
    elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
        reason = "timed out"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        reason = str(exc) or type(exc).__name__
    return ConnectError(
        endpoint.scrub(f"cannot connect to {endpoint.address} ({endpoint}): {reason}"), hint=hint
    )


async def connect(endpoint: Endpoint) -> asyncpg.Connection:
    """One read-only connection with pinned settings."""
    try:
        conn = await asyncpg.connect(**_connect_kwargs(endpoint))
    except DB_OR_TIMEOUT_ERRORS as e:
        raise _explain(endpoint, e) from None
    await _init_connection(conn)
    return conn


async def open_pool(endpoint: Endpoint, size: int) -> asyncpg.Pool:
    """A pool of ``size`` read-only connections with pinned settings."""
    try:
        pool = await asyncpg.create_pool(
            min_size=1, max_size=max(1, size), init=_init_connection, **_connect_kwargs(endpoint)
        )
    except DB_OR_TIMEOUT_ERRORS as e:
        raise _explain(endpoint, e) from None
    assert pool is not None
    return pool
