"""Connect like libpq: libpq's parser, every keyword asyncpg can honour, others refused;
multi-host and target_session_attrs; TLS with verify-full against a real server."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.db.connect import (
    SESSION_LIMITS,
    SUPPORTED_KEYWORDS,
    Endpoint,
    connect,
    open_pool,
    release_rounds,
)
from replverify.errors import ConnectError, UsageError
from replverify.testing.cluster import Cluster
from replverify.testing.postgres import cluster_tmp_root, free_port

SECRET = "Tls-S3cret-77"


def asyncpg_query(ep: Endpoint) -> dict[str, str]:
    url = dict(ep.kwargs)["dsn"]
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:pw@db1:5432,db2:5433/shop?sslmode=verify-full&sslrootcert=/ca.pem"
        "&sslcert=/c.pem&sslkey=/k.pem&application_name=me&target_session_attrs=read-write"
        "&passfile=/pgpass&options=-c%20lock_timeout%3D5s&connect_timeout=5",
        "host=db1,db2 port=5432,5433 user=app password=pw dbname=shop sslmode=verify-full "
        "sslrootcert=/ca.pem sslcert=/c.pem sslkey=/k.pem application_name=me "
        "target_session_attrs=read-write passfile=/pgpass options='-c lock_timeout=5s' "
        "connect_timeout=5",
    ],
    ids=["url", "keywords"],
)
def test_every_keyword_is_kept_in_both_forms(dsn):
    ep = Endpoint.parse(dsn)
    query = asyncpg_query(ep)
    assert query == {
        "host": "db1,db2", "port": "5432,5433", "user": "app", "password": "pw",
        "dbname": "shop", "sslmode": "verify-full", "sslrootcert": "/ca.pem",
        "sslcert": "/c.pem", "sslkey": "/k.pem", "application_name": "me",
        "target_session_attrs": "read-write", "passfile": "/pgpass",
        "options": "-c lock_timeout=5s",
    }  # fmt: skip
    assert dict(ep.kwargs)["timeout"] == 5.0  # connect_timeout, not a server setting
    assert str(ep).startswith("postgresql://app@db1:5432,db2:5433/shop?")
    assert "pw" not in str(ep) and "pw" not in repr(ep)
    assert ep.address == "db1:5432,db2:5433"
    assert "password" not in asyncpg_query(ep.without_secret())
    # what is shipped without the password reads back the same, spaces included
    again = Endpoint.parse(ep.without_secret().raw)
    assert again.kwargs == ep.without_secret().kwargs
    assert dict(again.params)["options"] == "-c lock_timeout=5s"


@pytest.mark.parametrize(
    ("dsn", "words"),
    [
        ("postgresql://h/db?keepalives=1", "'keepalives' is not supported"),
        ("host=h gssencmode=disable", "'gssencmode' is not supported"),
        ("postgresql://h/db?no_such_thing=1", "invalid URI query parameter"),
        ("host=h bogus=1", 'invalid connection option "bogus"'),
        ("host=h sslmode=sometimes", "sslmode must be one of"),
        ("host=h target_session_attrs=writable", "target_session_attrs must be one of"),
        ("postgresql://h/db?connect_timeout=soon", "connect_timeout must be a positive"),
        ("host=h port=x", "port must be a number"),
        ("host=a hostaddr=127.0.0.1", "hostaddr together with host"),
        ("just-a-word", "not a connection string"),
    ],
)
def test_what_cannot_be_honoured_is_refused_never_dropped(dsn, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        Endpoint.parse(dsn)


def test_supported_keywords_are_libpq_keywords():
    from psycopg.conninfo import conninfo_to_dict

    for key in SUPPORTED_KEYWORDS - {"sslnegotiation"}:  # libpq 17 and later only
        assert conninfo_to_dict(f"{key}=x") == {key: "x"}


def test_a_bad_dsn_error_never_shows_the_password():
    for dsn in (f"password={SECRET} oops", f"postgresql://u:{SECRET}@h/db?bogus=1"):
        with pytest.raises(UsageError) as info:
            Endpoint.parse(dsn)
        assert SECRET not in str(info.value)


def test_a_refused_dsn_on_the_command_line_exits_2_without_a_traceback():
    result = CliRunner().invoke(main, ["diff", "postgresql://h/db?keepalives=1", "host=h"])
    assert result.exit_code == 2, result.output
    assert "'keepalives' is not supported" in result.output
    assert "Traceback" not in result.output


async def test_connect_timeout_in_a_url_works(shop):
    src, tgt, _ = shop
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["diff", src + "?connect_timeout=5", tgt + "?connect_timeout=5"]
    )
    assert result.exit_code == 0, result.output


async def test_sessions_get_limits_options_and_application_name(primary_dsn):
    conn = await connect(Endpoint.parse(primary_dsn))
    try:
        for name, value in SESSION_LIMITS.items():
            shown = await conn.fetchval(f"SELECT current_setting('{name}')")
            assert shown == {"30s": "30s", "30min": "30min", "5min": "5min"}[value]
        assert await conn.fetchval("SHOW application_name") == "replverify"
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
    finally:
        await conn.close()
    dsn = primary_dsn + "?application_name=nightly&options=-c%20lock_timeout%3D1234ms"
    pool = await open_pool(Endpoint.parse(dsn), 1)
    try:
        for _ in range(2):  # the second acquire follows a RESET ALL on release
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW application_name") == "nightly"
                assert await conn.fetchval("SHOW lock_timeout") == "1234ms"
                assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
                await conn.execute("SET default_transaction_read_only = off")
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute("BEGIN READ ONLY; CREATE TEMP TABLE t (x int)")
                await conn.execute("ROLLBACK")
    finally:
        await pool.close()


async def test_pool_release_resets_only_a_changed_session(primary_dsn):
    """Giving a connection back costs no round trip while the server reports the session
    as it was set up (over a geo link that round trip was a third of a diff); a changed
    setting brings the full reset back."""
    pool = await open_pool(Endpoint.parse(primary_dsn), 1)
    try:
        async with pool.acquire() as conn:
            raw = conn._con
            before = raw._protocol.queries_count
            await conn.fetchval("SELECT 1")
        async with pool.acquire() as conn:
            assert conn._con is raw
            assert raw._protocol.queries_count == before + 1  # the SELECT; no reset
            await conn.execute("SET TimeZone = 'Asia/Tokyo'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW TimeZone") == "UTC"
            await conn.execute("SET DateStyle = 'SQL, DMY'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW DateStyle") == "ISO, YMD"
            assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
    finally:
        await pool.close()
    # what --digest auto counts for it: no round trip from 14 on, the reset's before
    assert (release_rounds(150018), release_rounds(140000), release_rounds(130011)) == (0, 0, 1)


async def test_multi_host_with_target_session_attrs_finds_the_primary(clusters):
    dead = free_port()
    primary, standby = clusters.primary, clusters.standby
    for attrs, in_recovery in (("read-write", False), ("primary", False), ("standby", True)):
        dsn = (
            f"postgresql://postgres@127.0.0.1:{dead},127.0.0.1:{standby.port},"
            f"127.0.0.1:{primary.port}/postgres?target_session_attrs={attrs}"
        )
        conn = await connect(Endpoint.parse(dsn))
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is in_recovery
            # still a read-only verifier on the read-write host
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("CREATE TABLE must_not_exist (x int)")
        finally:
            await conn.close()
    only_standby = f"postgresql://postgres@127.0.0.1:{standby.port}/postgres"
    with pytest.raises(ConnectError) as info:
        await connect(Endpoint.parse(only_standby + "?target_session_attrs=read-write"))
    assert "cannot connect" in str(info.value)


# --------------------------------------------------------------------------- TLS


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for ``localhost`` signed by it, and a second CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return key, cert

    ca_key, ca_cert = ca("replverify test CA")
    _, other_ca = ca("some other CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    files = {
        "ca": ca_cert.public_bytes(pem),
        "other_ca": other_ca.public_bytes(pem),
        "server.crt": server.public_bytes(pem),
        "server.key": server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    paths = {}
    for file, data in files.items():
        path = directory / file
        path.write_bytes(data)
        path.chmod(0o600 if file.endswith(".key") else 0o644)
        paths[file] = path
    assert ipaddress.ip_address("127.0.0.1")  # the host name that is NOT in the certificate
    return paths


@pytest.fixture(scope="module")
def tls_server():
    base = Path(tempfile.mkdtemp(prefix="replverify-tls-", dir=cluster_tmp_root()))
    os.chmod(base, 0o755)
    certs = base / "certs"
    certs.mkdir()
    os.chmod(certs, 0o755)
    paths = _certificates(certs)
    if os.geteuid() == 0:
        for file in ("server.crt", "server.key"):
            shutil.chown(paths[file], "postgres", "postgres")
    cluster = Cluster.init(
        base,
        "tls",
        settings={
            "ssl": "on",
            "ssl_cert_file": f"'{paths['server.crt']}'",
            "ssl_key_file": f"'{paths['server.key']}'",
        },
    )
    cluster.start()
    try:
        yield cluster, paths
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _tls_dsn(cluster: Cluster, host: str, ca: Path) -> str:
    return (
        f"postgresql://postgres:{SECRET}@{host}:{cluster.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={ca}"
    )


async def test_verify_full_connects_to_a_real_tls_server(tls_server):
    cluster, paths = tls_server
    conn = await connect(Endpoint.parse(_tls_dsn(cluster, "localhost", paths["ca"])))
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    keywords = (
        f"host=localhost port={cluster.port} user=postgres password={SECRET} dbname=postgres "
        f"sslmode=verify-full sslrootcert={paths['ca']}"
    )
    conn = await connect(Endpoint.parse(keywords))
    await conn.close()


@pytest.mark.parametrize(
    ("host", "ca", "words"),
    [
        ("localhost", "other_ca", "unable to get local issuer certificate"),
        ("127.0.0.1", "ca", "127.0.0.1"),  # the certificate names localhost only
    ],
    ids=["wrong-ca", "wrong-host-name"],
)
def test_a_wrong_ca_or_host_name_is_a_clear_error(tls_server, tmp_path, host, ca, words):
    cluster, paths = tls_server
    dsn = _tls_dsn(cluster, host, paths[ca])
    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["diff", dsn, dsn, "-o", str(report)])
    assert result.exit_code == 2, result.output
    assert "cannot connect" in result.output and words in result.output
    assert "TLS certificate was not accepted" in result.output and "sslrootcert" in result.output
    assert "Traceback" not in result.output and SECRET not in result.output
    assert not report.exists() or SECRET not in report.read_text()


def test_a_missing_certificate_file_is_named():
    dsn = "postgresql://localhost:1/x?sslmode=verify-full&sslrootcert=/no/such/ca.pem"
    result = CliRunner().invoke(main, ["diff", dsn, dsn])
    assert result.exit_code == 2 and "/no/such/ca.pem" in result.output, result.output


async def test_an_idle_verifier_in_a_transaction_is_ended_by_the_server(primary_dsn):
    conn = await connect(
        Endpoint.parse(primary_dsn + "?options=-c%20idle_in_transaction_session_timeout%3D300ms")
    )
    try:
        await conn.execute("BEGIN")
        await conn.fetchval("SELECT count(*) FROM pg_class")
        await asyncio.sleep(1.0)  # a frozen client: its locks must not stay
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


async def test_a_service_name_is_looked_up_in_the_service_file(clusters, tmp_path, monkeypatch):
    services = tmp_path / "pg_service.conf"
    port = clusters.primary.port
    services.write_text(f"[verify]\nhost=127.0.0.1\nport={port}\nuser=postgres\ndbname=postgres\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    for dsn in ("service=verify", "postgresql:///?service=verify"):
        conn = await connect(Endpoint.parse(dsn))
        try:
            assert await conn.fetchval("SELECT current_setting('port')::int") == port
        finally:
            await conn.close()
