"""``replverify files`` against object stores: a real Azure Storage emulator (Azurite).

The session installs Azurite from the npm registry into a cache directory when it is not
there yet (``REPLVERIFY_AZURITE_DIR``, default ``~/.cache/replverify/azurite``) and
starts it on a free loopback port, in memory, telemetry off. Without node/npm, or when
the install fails, the tests fail: they never skip.

Azurite's one account holds two containers, ``primary`` and ``secondary``: the two sides.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.errors import UsageError
from replverify.ops.files import HashLedger, compare_objects
from replverify.ops.objstore import LocalStore, ObjectInfo, ObstoreStore, StoreError, open_store

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azurite_bin() -> Path:
    cache = Path(
        os.environ.get("REPLVERIFY_AZURITE_DIR")
        or Path.home() / ".cache" / "replverify" / "azurite"
    )
    exe = cache / "node_modules" / ".bin" / "azurite-blob"
    if exe.exists():
        return exe
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("Azurite tests need node and npm (Debian: nodejs, npm)", pytrace=False)
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), "azurite@3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not exe.exists():
        pytest.fail(f"npm install azurite failed:\n{done.stderr[-2000:]}", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The connection string of a running Azurite blob service."""
    exe = _azurite_bin()
    log = tmp_path_factory.mktemp("azurite") / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
             "--extentMemoryLimit", "256", "--disableTelemetry", "--skipApiVersionCheck",
             "--loose"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    port = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"listens on http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            port = int(m.group(1))
            break
        time.sleep(0.1)
    if port is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"Azurite did not start:\n{log.read_text()}", pytrace=False)
    try:
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _upload(container: Any, name: str, data: bytes, *, md5: bool = True) -> None:
    if md5:
        container.upload_blob(name, data, overwrite=True)
        return
    # Put Block List stores no Content-MD5 of the whole blob (Put Blob always does).
    blob = container.get_blob_client(name)
    block = base64.b64encode(b"block-0").decode()
    blob.stage_block(block, data)
    from azure.storage.blob import BlobBlock

    blob.commit_block_list([BlobBlock(block_id=block)])


@pytest.fixture
def sides(azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    service = BlobServiceClient.from_connection_string(azurite)
    made = []
    for name in ("primary", "secondary"):
        c = service.get_container_client(name)
        if c.exists():
            c.delete_container()
        c.create_container()
        made.append(c)
    yield made[0], made[1]


BLOBS = {
    "a.txt": b"alpha",
    "docs/readme.md": b"# hi\n",
    "docs/deep/blob.bin": bytes(range(256)) * 300,
    "same-size.txt": b"12345",
    "a-c": b"dash",
    "a/x": b"slash",
}


def _fill(c: Any, blobs: dict[str, bytes], **kw: Any) -> None:
    for name, data in blobs.items():
        _upload(c, name, data, **kw)


def _json(args: list[str]) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["files", *args, "--format", "json"])
    assert result.exit_code in (0, 1, 2), result.output
    return result.exit_code, json.loads(result.stdout)


def test_identical_containers_settle_from_content_md5(sides: tuple[Any, Any]) -> None:
    for c in sides:
        _fill(c, BLOBS)
    code, doc = _json(["az://primary", "az://secondary"])
    assert code == 0 and doc["status"] == "identical"
    s = doc["summary"]
    assert s["compared"] == len(BLOBS) == s["by_listing"] and s["hashed"] == 0
    assert s["bytes_read"] == 0  # nothing was downloaded


def test_planted_differences_say_how_they_were_found(sides: tuple[Any, Any]) -> None:
    primary, secondary = sides
    _fill(primary, BLOBS)
    changed = dict(BLOBS, **{"same-size.txt": b"54321", "docs/readme.md": b"# hello!\n"})
    del changed["a.txt"]
    changed["new.txt"] = b"new"
    _fill(secondary, changed)
    # No Content-MD5 on one side: these must be read. One equal, one not.
    _upload(primary, "nomd5-equal", b"same bytes")
    _upload(secondary, "nomd5-equal", b"same bytes", md5=False)
    _upload(primary, "nomd5-changed", b"bytes one")
    _upload(secondary, "nomd5-changed", b"bytes two", md5=False)
    code, doc = _json(["az://primary", "az://secondary"])
    assert code == 1
    found = {(d["kind"], d["path"]): (d["reason"], d["method"]) for d in doc["differences"]}
    assert found == {
        ("missing", "a.txt"): ("", "listing"),
        ("extra", "new.txt"): ("", "listing"),
        ("changed", "docs/readme.md"): ("size: 5 vs 9 bytes", "size"),
        ("changed", "same-size.txt"): ("content (Content-MD5)", "md5"),
        ("changed", "nomd5-changed"): ("content", "content"),
    }
    assert doc["summary"]["hashed"] == 2
    assert doc["summary"]["bytes_read"] == 2 * len(b"same bytes") + 2 * len(b"bytes one")
    text = CliRunner().invoke(main, ["files", "az://primary", "az://secondary"]).output
    assert "same-size.txt: content (Content-MD5) [md5]" in text


def test_local_directory_and_file_url_against_a_container(
    sides: tuple[Any, Any], tmp_path: Path
) -> None:
    primary, _ = sides
    _fill(primary, {f"att/{k}": v for k, v in BLOBS.items()} | {"other/x": b"not listed"})
    for rel, data in BLOBS.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    code, doc = _json([f"file://{tmp_path}", "az://primary/att"])
    assert code == 0, doc
    assert doc["summary"]["hashed"] == len(BLOBS)  # a directory lists no MD5: read both
    (tmp_path / "a-c").write_bytes(b"DASH")
    code, doc = _json([str(tmp_path), "az://primary/att/"])
    assert code == 1
    assert [(d["kind"], d["path"], d["method"]) for d in doc["differences"]] == [
        ("changed", "a-c", "content")
    ]


def test_rpo_on_the_emulator_is_answered_but_cannot_mean_anything(
    sides: tuple[Any, Any],
) -> None:
    for c in sides:
        _fill(c, {"a": b"1"})
    code, doc = _json(["az://primary", "az://secondary", "--rpo", "60"])
    rpo = doc["rpo"]
    # Azurite answers Get Blob Service Stats on the secondary endpoint with status "live"
    # and the time of the request as the last sync: always "within".
    assert rpo["status"] == "live" and rpo["within_rpo"] is True and code == 0
    assert rpo["lag_seconds"] < 60
    assert "cannot tell a real RPO" in rpo["note"]


def test_read_access_secondary_of_the_same_account(sides: tuple[Any, Any]) -> None:
    primary, _ = sides
    _fill(primary, BLOBS)
    # Azurite serves its account's secondary at /ACCOUNT-secondary, mirrored at once.
    code, doc = _json(["az://primary", f"az://primary@{ACCOUNT}-secondary", "--rpo", "600"])
    assert code == 0 and doc["status"] == "identical", doc
    assert doc["summary"]["compared"] == len(BLOBS) and doc["rpo"]["status"] == "live"
    result = CliRunner().invoke(main, ["files", "az://primary", "az://primary@someoneelse"])
    assert result.exit_code == 2 and f"{ACCOUNT}-secondary (its geo-secondary)" in result.output


def test_rpo_where_no_store_can_tell(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["files", str(tmp_path), str(tmp_path), "--rpo", "60"])
    assert result.exit_code == 2
    assert "--rpo needs an az:// location" in result.output


def test_rpo_on_an_account_without_a_secondary(azurite: str, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:  # fmt: skip
    from replverify.ops.objstore import AzureStore

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    store = open_store("az://primary")
    assert isinstance(store, AzureStore)
    # The primary endpoint refuses Get Blob Service Stats, as Azure does: point the
    # secondary at it to see the "cannot tell" path (exit 2, never 0).
    monkeypatch.setattr(AzureStore, "secondary_url", lambda self: self.service.url)
    code, doc = _json([str(tmp_path), "az://primary", "--rpo", "60"])
    assert code == 2 and doc["rpo"]["within_rpo"] is None
    assert doc["rpo"]["note"].startswith("cannot tell")


def test_missing_credentials_and_bad_locations(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:  # fmt: skip
    for var in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(main, ["files", str(tmp_path), "az://c"])
    assert result.exit_code == 2 and "AZURE_STORAGE_CONNECTION_STRING" in result.output
    result = CliRunner().invoke(main, ["files", str(tmp_path), "ftp://host/x"])
    assert result.exit_code == 2 and "unknown location" in result.output
    result = CliRunner().invoke(main, ["files", str(tmp_path / "nope"), "az://c"])
    assert result.exit_code == 2 and "is not a directory" in result.output


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)
    monkeypatch.setitem(sys.modules, "obstore", None)
    for url in ("az://c", "s3://bucket/x", "gs://bucket"):
        result = CliRunner().invoke(main, ["files", str(tmp_path), url])
        assert result.exit_code == 2
        assert "pip install 'replverify[blob]'" in result.output, result.output


def test_unreachable_store_is_trouble(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};",
    )
    monkeypatch.setattr("replverify.ops.objstore.AZURE_PAGE", 10)
    from azure.storage.blob import BlobServiceClient

    orig = BlobServiceClient.from_connection_string

    def no_retries(cs: str, **kw: Any) -> Any:
        return orig(cs, retry_total=0, **kw)

    monkeypatch.setattr(BlobServiceClient, "from_connection_string", no_retries)
    result = CliRunner().invoke(main, ["files", str(tmp_path), "az://c"])
    assert result.exit_code == 2 and "cannot list az://c" in result.output


def test_state_resumes_without_reading_again(sides: tuple[Any, Any], tmp_path: Path) -> None:
    primary, secondary = sides
    _fill(primary, BLOBS, md5=False)
    _fill(secondary, dict(BLOBS, **{"a-c": b"DASH"}), md5=False)
    state = tmp_path / "files.state"
    code, first = _json(["az://primary", "az://secondary", "--state", str(state)])
    assert code == 1 and first["summary"]["bytes_read"] > 0
    code, again = _json(["az://primary", "az://secondary", "--state", str(state)])
    assert code == 1 and again["differences"] == first["differences"]
    assert again["summary"]["bytes_read"] == 0 and again["resumed_after"] == "same-size.txt"
    args = ["files", "az://primary", str(tmp_path), "--state", str(state)]
    other = CliRunner().invoke(main, args)
    assert other.exit_code == 2 and "records another comparison" in other.output


def test_ledger_takes_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "s"
    ledger = HashLedger(str(path), "a", "b", every_s=0)
    ledger.record("k1", True)
    ledger.record("k2", False)
    ledger.close()
    with open(path, "a") as f:
        f.write('{"upto": "k9", "chan')  # the process died mid-write
    again = HashLedger(str(path), "a", "b")
    assert again.resumed_after == "k2"
    assert again.known("k1") is True and again.known("k2") is False and again.known("k3") is None
    again.close()


def test_obstore_store_and_local_keys_in_listing_order(tmp_path: Path) -> None:
    from obstore.store import MemoryStore

    mem = MemoryStore()
    import obstore

    for key, data in {"p/a/x": b"1", "p/a.b": b"2", "p/a-c": b"3", "q": b"no"}.items():
        obstore.put(mem, key, data)
    for rel, data in {"a/x": b"1", "a.b": b"2", "a-c": b"3"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    local = LocalStore(str(tmp_path))
    assert [o.key for o in local.list()] == ["a-c", "a.b", "a/x"]
    store = ObstoreStore(mem, "p", "mem://p")
    assert [o.key for o in store.list()] == ["a-c", "a.b", "a/x"]
    report = compare_objects(local, store)
    assert report.status == "identical" and report.hashed == 3


def test_a_listing_out_of_order_is_refused() -> None:
    class Fake:
        display = "fake"

        def list(self) -> Iterator[ObjectInfo]:
            yield ObjectInfo("b", 1)
            yield ObjectInfo("a", 1)

        def read(self, key: str) -> Iterator[bytes]:
            yield b"x"

    with pytest.raises(StoreError, match="not in key order"):
        compare_objects(Fake(), Fake())


def test_local_symlink_cannot_be_compared_with_an_object(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    os.symlink("elsewhere", a / "link")
    report = compare_objects(LocalStore(str(a)), LocalStore(str(a)))
    assert [(d.kind, d.path) for d in report.differences] == [("unreadable", "link")]
    assert not report.complete
    with pytest.raises(UsageError):
        LocalStore(str(tmp_path / "missing"))


def test_md5_helper_matches_what_azure_lists(sides: tuple[Any, Any]) -> None:
    primary, _ = sides
    _upload(primary, "x", b"hello")
    (blob,) = list(primary.list_blobs())
    assert bytes(blob.content_settings.content_md5) == hashlib.md5(b"hello").digest()
