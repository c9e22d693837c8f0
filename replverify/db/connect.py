"""DSNs, password redaction, and asyncpg pools with pinned session settings.

Every connection replverify opens is read-only and runs each statement in a
``repeatable read`` snapshot, and pins the settings that change how values print
(TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output), so both sides
of a comparison encode the same value the same way whatever their server defaults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping
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

#: A value in key=value form: single-quoted (backslash escapes inside) or up to a space.
_KV_VALUE = r"('(?:[^'\\]|\\.)*'|\S*)"
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


#: libpq keywords passed on to asyncpg in its URL form, which reads each one itself.
ASYNCPG_KEYWORDS = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "dbname",
        "passfile",
        "service",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "sslpassword",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "sslnegotiation",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
#: libpq keywords replverify turns into asyncpg arguments: ``connect_timeout`` (seconds)
#: becomes the connect timeout, ``options`` and ``application_name`` startup parameters
#: (the server reads ``-c name=value`` in ``options`` itself), ``hostaddr`` the host.
MAPPED_KEYWORDS = frozenset(
    {"connect_timeout", "options", "application_name", "fallback_application_name", "hostaddr"}
)
SUPPORTED_KEYWORDS = ASYNCPG_KEYWORDS | MAPPED_KEYWORDS
_SECRET_KEYWORDS = ("password", "sslpassword")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")


def _libpq_parse(dsn: str) -> dict[str, str]:
    """libpq's own parser (``PQconninfoParse``, through psycopg): URLs, host lists,
    key=value quoting and percent-decoding exactly as psql reads them."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as e:  # libpq itself missing: psycopg's pure-Python mode needs it
        raise UsageError(
            f"cannot parse connection strings: {e}",
            hint="install libpq (e.g. apt-get install libpq5) or: pip install 'psycopg[binary]'",
        ) from None
    import psycopg

    try:
        parsed = conninfo_to_dict(dsn)
    except psycopg.Error as e:
        text = str(e).strip()
        for secret in written_passwords(dsn):
            if secret:
                text = text.replace(secret, "***")
        raise UsageError(
            f"bad connection string {redact_text(dsn)!r}: {redact_text(text)}",
            hint="use postgresql://user@host:port/db?param=value or 'host=... dbname=...'",
        ) from None
    return {k: str(v) for k, v in parsed.items() if v is not None and str(v) != ""}


def _checked(params: dict[str, str]) -> dict[str, str]:
    """``params`` with ``hostaddr`` folded into ``host``; what asyncpg cannot do refused."""
    unsupported = sorted(set(params) - SUPPORTED_KEYWORDS)
    if unsupported:
        raise UsageError(
            f"connection parameter {', '.join(map(repr, unsupported))} is not supported: "
            "replverify connects with asyncpg, which has no equivalent",
            hint="supported: " + ", ".join(sorted(SUPPORTED_KEYWORDS)),
        )
    params = dict(params)
    if "hostaddr" in params:
        if "host" in params:
            raise UsageError("hostaddr together with host is not supported: give only host=ADDRESS")
        params["host"] = params.pop("hostaddr")
    for port in params.get("port", "").split(","):
        if port and not port.isdigit():
            raise UsageError(f"port must be a number, not {port!r}")
    if params.get("sslmode", "prefer") not in _SSLMODES:
        raise UsageError(
            f"sslmode must be one of {', '.join(_SSLMODES)}, not {params['sslmode']!r}"
        )
    if params.get("target_session_attrs", "any") not in _SESSION_ATTRS:
        raise UsageError(
            f"target_session_attrs must be one of {', '.join(_SESSION_ATTRS)}, "
            f"not {params['target_session_attrs']!r}"
        )
    if "connect_timeout" in params:
        try:
            ok = float(params["connect_timeout"]) > 0
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(
                "connect_timeout must be a positive number of seconds, "
                f"not {params['connect_timeout']!r}"
            )
    if "fallback_application_name" in params:
        name = params.pop("fallback_application_name")
        params.setdefault("application_name", name)
    return params


def _hosts_display(params: Mapping[str, str], *, env: bool) -> tuple[str, str]:
    """``(netloc hosts, socket directory)`` for display: ``h1:5432,[::1]:5433``; a Unix
    socket directory cannot sit in a URL's host part, so it is shown as ``?host=``."""
    hosts = params.get("host") or (os.environ.get("PGHOST", "") if env else "")
    ports = params.get("port") or (os.environ.get("PGPORT", "") if env else "")
    if hosts.startswith("/"):
        return (f":{ports}" if ports else ""), hosts
    host_list = hosts.split(",")
    port_list = ports.split(",") if ports else []
    if len(port_list) == 1:
        port_list *= len(host_list)
    shown = []
    for i, host in enumerate(host_list):
        port = port_list[i] if i < len(port_list) else ""
        if ":" in host:
            host = f"[{host}]"
        shown.append(host + (f":{port}" if port else ""))
    return ",".join(shown), ""


def _query(pairs: Iterable[tuple[str, str]]) -> str:
    """A URL query libpq reads back: spaces as ``%20`` (libpq does not take ``+``)."""
    return urllib.parse.urlencode(list(pairs), quote_via=urllib.parse.quote)


def _display(params: Mapping[str, str], *, env: bool) -> str:
    """A URL of ``params`` without any secret: for messages, reports and logs."""
    netloc, socket_dir = _hosts_display(params, env=env)
    user = params.get("user") or (os.environ.get("PGUSER", "") if env else "")
    if user:
        netloc = f"{urllib.parse.quote(user, safe='')}@{netloc}"
    db = params.get("dbname") or (os.environ.get("PGDATABASE", "") if env else "")
    rest = [
        (k, v)
        for k, v in params.items()
        if k not in ("host", "port", "user", "dbname", *_SECRET_KEYWORDS)
    ]
    if socket_dir:
        rest.insert(0, ("host", socket_dir))
    query = _query(rest)
    return f"postgresql://{netloc}/{urllib.parse.quote(db, safe='')}" + (
        f"?{query}" if query else ""
    )


def _asyncpg_url(params: Mapping[str, str]) -> str:
    """The URL asyncpg reads: every keyword as a query parameter (asyncpg takes host,
    port, user, password and dbname from the query too), ``connect_timeout`` left out
    (it becomes the connect timeout)."""
    kept = [(k, v) for k, v in params.items() if k != "connect_timeout"]
    return "postgresql://" + (
        f"?{urllib.parse.urlencode(kept, quote_via=urllib.parse.quote)}" if kept else ""
    )


@dataclass(frozen=True)
class Endpoint:
    """A parsed DSN. ``str()``/``repr()`` never show the password."""

    raw: str = field(repr=False)
    kwargs: tuple[tuple[str, Any], ...] = field(repr=False, default=())
    display: str = ""
    secret: str | None = field(repr=False, default=None)
    #: The libpq keywords of the DSN (after ``hostaddr``/``fallback_application_name``).
    params: tuple[tuple[str, str], ...] = field(repr=False, default=())

    @classmethod
    def parse(cls, dsn: str) -> Endpoint:
        """Parse a libpq URL (``postgresql://…``) or ``key=value`` string; ``""`` uses PG*.

        Every libpq keyword asyncpg can honour is kept (:data:`SUPPORTED_KEYWORDS`);
        any other is refused with :class:`UsageError`, never dropped.
        """
        dsn = dsn.strip()
        is_url = dsn.startswith(("postgresql://", "postgres://"))
        if dsn and not is_url and "=" not in dsn:
            raise UsageError(
                f"not a connection string: {redact_text(dsn)!r}",
                hint="use postgresql://user@host:port/db or 'host=... dbname=...'",
            )
        params = _checked(_libpq_parse(dsn))
        return cls._of(params, raw=dsn, env=not is_url)

    @classmethod
    def _of(cls, params: dict[str, str], *, raw: str, env: bool) -> Endpoint:
        kwargs: dict[str, Any] = {"dsn": _asyncpg_url(params)}
        if "connect_timeout" in params:
            kwargs["timeout"] = float(params["connect_timeout"])
        return cls(
            raw=raw,
            kwargs=tuple(kwargs.items()),
            display=_display(params, env=env),
            secret=params.get("password"),
            params=tuple(params.items()),
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret of the DSN (``password``, ``sslpassword``)."""
        kw = dict(self.params)
        return tuple(kw[k] for k in _SECRET_KEYWORDS if kw.get(k))

    def without_secret(self) -> Endpoint:
        """The same endpoint with no password in it: safe to store, log or ship to a
        worker, which then authenticates with its own means (PGPASSWORD, .pgpass, ...)."""
        if not self.secrets:
            return self
        params = {k: v for k, v in self.params if k not in _SECRET_KEYWORDS}
        clean = Endpoint._of(params, raw="", env=False)
        raw = "postgresql://" + (
            f"?{urllib.parse.urlencode(params, quote_via=urllib.parse.quote)}" if params else ""
        )
        return dataclasses.replace(clean, raw=raw, display=self.display)

    @property
    def options(self) -> str | None:
        """The DSN's ``options`` (``-c name=value ...``), passed to the server as given."""
        return dict(self.params).get("options")

    @property
    def application_name(self) -> str | None:
        return dict(self.params).get("application_name")

    @property
    def hosts(self) -> tuple[tuple[str | None, int | None], ...]:
        """``(host, port)`` of each host the DSN names (None: not given, PG* or libpq's
        default applies); one pair for a DSN without a host list."""
        params = dict(self.params)
        host_list = params.get("host", "").split(",")
        ports = params.get("port", "").split(",")
        if len(ports) == 1:
            ports *= len(host_list)
        return tuple(
            (h or None, int(ports[i]) if i < len(ports) and ports[i] else None)
            for i, h in enumerate(host_list)
        )

    @property
    def address(self) -> str:
        """``host:port`` as the connection will try it (for error messages); a list for
        a multi-host DSN."""
        params = dict(self.params)
        hosts = params.get("host") or os.environ.get("PGHOST") or "localhost"
        ports = (params.get("port") or os.environ.get("PGPORT") or "5432").split(",")
        host_list = hosts.split(",")
        if len(ports) == 1:
            ports *= len(host_list)
        return ",".join(
            (f"[{h}]" if ":" in h else h or "localhost")
            + f":{ports[i] if i < len(ports) and ports[i] else 5432}"
            for i, h in enumerate(host_list)
        )

    def scrub(self, text: str) -> str:
        """Remove this endpoint's secrets from ``text``."""
        text = redact_text(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
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


#: Limits of every verification session, so that a verifier never holds up production:
#: a read waits at most ``lock_timeout`` behind another session's lock (then that table
#: is reported as not verified), no statement runs past ``statement_timeout``, and a
#: session that stops talking inside a transaction (a frozen client) is ended by the
#: server after ``idle_in_transaction_session_timeout``, releasing its locks (longer than
#: the default --lag-timeout, which a keyless table's source stream may sit through
#: while the standby catches up, and than reconcile's pauses between batches). A DSN's
#: ``options=-c name=value`` overrides each (it is applied after these).
SESSION_LIMITS: Mapping[str, str] = {
    "lock_timeout": "30s",
    "statement_timeout": "30min",
    "idle_in_transaction_session_timeout": "5min",
}

#: Sent after the login rather than in it: a read-only default in the startup packet
#: makes every host fail ``target_session_attrs=read-write`` (asyncpg, like libpq,
#: checks the session's ``default_transaction_read_only``).
_READ_ONLY_SQL = "SET default_transaction_read_only = on;"


#: Session settings the server reports whenever they change (ParameterStatus messages;
#: ``default_transaction_read_only`` since PostgreSQL 14): a release sees without a round
#: trip whether the session is still the one its connection set up.
_REPORTED = ("default_transaction_read_only", "TimeZone", "DateStyle", "IntervalStyle",
             "application_name", "client_encoding", "standard_conforming_strings")  # fmt: skip


class VerifierConnection(asyncpg.Connection):  # type: ignore[misc]
    """A verifier's connection: read-only, its settings pinned. Its full reset (on
    release to a pool, after ``RESET ALL``) keeps the session read-only; a pool runs it
    only when the session changed (:func:`_release`)."""

    __slots__ = ("_set_up",)

    def get_reset_query(self) -> str:
        return str(super().get_reset_query() or "") + _READ_ONLY_SQL

    def reported(self) -> tuple[str | None, ...]:
        """The reported settings, as the server last reported them (no round trip)."""
        settings = self.get_settings()
        return tuple(getattr(settings, name, None) for name in _REPORTED)


#: The first server version that reports ``default_transaction_read_only``: from it on
#: a release (:func:`_release`) of a session left as it was set up costs no round trip.
REPORTS_READ_ONLY = 140000


def release_rounds(version_num: int) -> int:
    """Round trips a pool's release of a diff connection costs on a server of this
    version: the full reset's before :data:`REPORTS_READ_ONLY`, none from it on."""
    return 0 if version_num >= REPORTS_READ_ONLY else 1


async def _release(conn: asyncpg.Connection) -> None:
    """A pool's reset of a connection given back (asyncpg has rolled back any open
    transaction first): none while the server reports the session as it was set up,
    read-only included; the full reset otherwise, and on servers before 14, which do not
    report read-only. The comparison's reads change nothing else of a session (no SET,
    LISTEN, advisory lock or cursor outside a transaction), and the full reset's round
    trip was, over a geo link, a third of a run: the fixed cost of every chunk."""
    if isinstance(conn, VerifierConnection):
        now = conn.reported()
        if now[0] == "on" and now == getattr(conn, "_set_up", None):
            return
    await conn.reset()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_READ_ONLY_SQL)
    # asyncpg's default interval codec folds a year into 365 days, which PostgreSQL's
    # interval equality does not; keep the raw (months, days, microseconds) triple.
    await conn.set_type_codec(
        "interval",
        schema="pg_catalog",
        encoder=lambda v: v,
        decoder=lambda v: v,
        format="tuple",
    )
    if isinstance(conn, VerifierConnection):
        conn._set_up = conn.reported()


def session_options(endpoint: Endpoint) -> str:
    """The ``options`` startup parameter: :data:`SESSION_LIMITS`, then the DSN's own."""
    limits = " ".join(f"-c {k}={v}" for k, v in SESSION_LIMITS.items())
    return f"{limits} {endpoint.options}" if endpoint.options else limits


def _connect_kwargs(endpoint: Endpoint) -> dict[str, Any]:
    kw = dict(endpoint.kwargs)
    kw.setdefault("timeout", 15.0)
    settings = {k: v for k, v in PINNED_SETTINGS.items() if k != "default_transaction_read_only"}
    if endpoint.application_name:
        settings["application_name"] = endpoint.application_name
    settings["options"] = session_options(endpoint)
    kw["server_settings"] = settings
    kw["connection_class"] = VerifierConnection
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
    elif isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"the server's TLS certificate was not accepted: {exc.verify_message}"
        hint = (
            "sslrootcert= names the CA that signed the server's certificate; with "
            "sslmode=verify-full the host name must be one the certificate names"
        )
    elif isinstance(exc, ssl.SSLError):
        reason = f"TLS failed: {exc.reason or exc}"
    elif isinstance(exc, socket.gaierror):
        reason = f"unknown host ({exc.strerror})"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused (is the server running and listening there?)"
    elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
        reason = "timed out"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        # asyncpg's TLS set-up does not say which file it could not read
        params = dict(endpoint.params)
        missing = [
            f"{k}={params[k]}"
            for k in ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")
            if k in params and not os.path.exists(os.path.expanduser(params[k]))
        ]
        if exc.filename or missing:
            reason += ": " + (str(exc.filename) if exc.filename else ", ".join(missing))
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
            min_size=1,
            max_size=max(1, size),
            init=_init_connection,
            reset=_release,
            **_connect_kwargs(endpoint),
        )
    except DB_OR_TIMEOUT_ERRORS as e:
        raise _explain(endpoint, e) from None
    assert pool is not None
    return pool
