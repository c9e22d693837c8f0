"""The alternate endpoint's DSN by the ``--s`` naming convention of managed services."""

from __future__ import annotations

import re
import urllib.parse

from replverify.db.connect import Endpoint
from replverify.errors import UsageError

__all__ = ["SUFFIX", "alternate_dsn"]

SUFFIX = "--s"


def _alternate_host(host: str) -> str:
    if not host or host.startswith("/") or host == "localhost" or ":" in host:
        raise UsageError(
            f"no alternate host name for {host or '(default host)'!r}: the '--s' convention "
            "needs a DNS name such as contoso.db.example.com"
        )
    label, dot, rest = host.partition(".")
    if not dot or re.fullmatch(r"[\d.]+", host):
        raise UsageError(
            f"no alternate host name for {host!r}: the '--s' convention needs a DNS name "
            "such as contoso.db.example.com"
        )
    label = label[: -len(SUFFIX)] if label.endswith(SUFFIX) else label + SUFFIX
    return f"{label}.{rest}"


def alternate_dsn(dsn: str) -> str:
    """The DSN of the alternate (secondary) endpoint by the ``--s`` naming convention:
    host ``contoso.db.example.com`` becomes ``contoso--s.db.example.com`` (and back).

    Works for ``postgresql://`` URLs and ``key=value`` strings; every host of a
    multi-host DSN is mapped; everything else (user, password, port, options) is kept.
    Raises :class:`~replverify.errors.UsageError` when there is no DNS name to map.
    """
    text = dsn.strip()
    if text.startswith(("postgresql://", "postgres://")):
        url = urllib.parse.urlsplit(text)
        userinfo, at, hosts = url.netloc.rpartition("@")
        mapped = []
        for part in hosts.split(","):
            if part.startswith("["):
                raise UsageError("no alternate host name for an IPv6 address")
            host, colon, port = part.partition(":")
            mapped.append(_alternate_host(host) + colon + port)
        netloc = userinfo + at + ",".join(mapped)
        return urllib.parse.urlunsplit(url._replace(netloc=netloc))
    Endpoint.parse(text)  # a clear error for what is not a DSN at all
    m = re.search(r"(^|\s)host\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", text)
    if m is None:
        raise UsageError("no alternate host name: the connection string names no host")
    value = m.group(2)
    quoted = value.startswith("'")
    hosts = re.sub(r"\\(.)", r"\1", value[1:-1]) if quoted else value
    new = ",".join(_alternate_host(h) for h in hosts.split(","))
    if quoted:
        new = "'" + new.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text[: m.start(2)] + new + text[m.end(2) :]
