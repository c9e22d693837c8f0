"""Where ``replverify files`` reads objects: local directories and object stores.

Every store lists its objects as one stream of :class:`ObjectInfo` in key order (code
point order of the key, which is the UTF-8 byte order that Azure, S3 and GCS list in), so
two listings are merged with memory for one object per side, however many there are.

Which library, and why:

- ``az://`` goes through azure-storage-blob, the official SDK that adlfs is built on.
  Its ``list_blobs`` pages lazily (5,000 blobs a request) and carries each blob's
  Content-MD5, and it is the only one of the candidates that answers Get Blob Service
  Stats (the geo-secondary's last sync time, for ``--rpo``). adlfs's ``find``/``walk``
  build the whole listing in memory first, and obstore's ``ObjectMeta`` has no
  Content-MD5 (an Azure ETag is opaque), so neither serves here.
- ``s3://`` and ``gs://`` go through obstore: a streamed listing in pages, streamed reads,
  credentials from the store's standard environment (``AWS_*``,
  ``GOOGLE_APPLICATION_CREDENTIALS``/``GOOGLE_SERVICE_ACCOUNT``). Its listing gives no
  content hash that is one on every object (an S3 ETag is an MD5 only for single-part,
  non-KMS uploads), so those objects are compared by streaming their content.

Both libraries are the ``blob`` extra (``pip install 'replverify[blob]'``), imported only
when such a location is given.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from replverify.errors import ReplverifyError, UsageError

__all__ = [
    "BLOB_HINT",
    "AzureStore",
    "GeoStats",
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "ObstoreStore",
    "StoreError",
    "is_local",
    "local_path",
    "open_store",
]

BLOB_HINT = "pip install 'replverify[blob]'"
READ_BLOCK = 1 << 20
AZURE_PAGE = 5000


class StoreError(ReplverifyError):
    """An object store could not be listed or read (exit 2)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key relative to the location, its size, and its Content-MD5
    when the listing carries one. ``error`` is set for an entry that is no object (a
    symlink, a special file): it cannot be compared."""

    key: str
    size: int
    md5: bytes | None = None
    error: str | None = None


class ObjectStore(Protocol):
    display: str

    def list(self) -> Iterator[ObjectInfo]:
        """Every object, in key order."""
        ...

    def read(self, key: str) -> Iterator[bytes]:
        """The content of ``key`` in blocks."""
        ...


@dataclass(frozen=True)
class GeoStats:
    """Get Blob Service Stats of an account's secondary: ``status`` is ``live``,
    ``bootstrap`` or ``unavailable``; ``last_sync`` (UTC) is when the secondary last held
    every write made before it, or None when the service does not say."""

    status: str
    last_sync: dt.datetime | None
    emulator: bool = False


def is_local(location: str) -> bool:
    scheme = urllib.parse.urlsplit(location).scheme
    return scheme in ("", "file") or len(scheme) == 1  # "C:\..." on Windows


def local_path(location: str) -> str:
    """The directory a local location names (a path or a ``file://`` URL)."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme != "file":
        return location
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"{location}: a file:// URL names a path on this machine (file:///DIR)")
    return urllib.parse.unquote(parts.path)


def open_store(location: str) -> ObjectStore:
    """The store a SOURCE/TARGET argument names."""
    if is_local(location):
        return LocalStore(local_path(location))
    parts = urllib.parse.urlsplit(location)
    if not parts.netloc:
        raise UsageError(f"{location}: name the container or bucket ({parts.scheme}://NAME/...)")
    prefix = parts.path.strip("/")
    if parts.scheme in ("az", "abfs", "azure"):
        container, _, account = parts.netloc.partition("@")
        return AzureStore.from_environment(
            container, prefix, display=location, account=account or None
        )
    if parts.scheme in ("s3", "gs"):
        return ObstoreStore.from_url(f"{parts.scheme}://{parts.netloc}", prefix, location)
    raise UsageError(
        f"{location}: unknown location (give a directory, file://, az://CONTAINER[/PREFIX], "
        "s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX])"
    )


# == local =================================================================================
class LocalStore:
    """The regular files below a directory, keyed by their relative path with ``/``.

    Sorting each directory's names with a directory as ``name/`` makes the depth-first
    walk come out in plain key order (``a-c``, ``a.b``, ``a/x``), as object stores list.
    Symlinks are not followed; they and special files are listed with ``error`` set.
    """

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise UsageError(f"{root} is not a directory")
        self.root = root
        self.display = root

    def list(self) -> Iterator[ObjectInfo]:
        return self._listing(self.root, "")

    def _listing(self, here: str, rel: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(here) as it:
                entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                           for e in it]  # fmt: skip
        except OSError as e:
            raise StoreError(f"cannot list {here}: {e.strerror or e}") from None
        entries.sort(key=lambda pair: pair[0])
        for name, entry in entries:
            key = rel + entry.name
            if name.endswith("/"):
                yield from self._listing(entry.path, key + "/")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                yield ObjectInfo(key, 0, error=e.strerror or type(e).__name__)
                continue
            if stat.S_ISREG(st.st_mode):
                yield ObjectInfo(key, st.st_size)
            elif stat.S_ISLNK(st.st_mode):
                yield ObjectInfo(key, 0, error="a symlink (not followed; no object to compare)")
            else:
                yield ObjectInfo(key, 0, error="a special file (no object to compare)")

    def read(self, key: str) -> Iterator[bytes]:
        with open(os.path.join(self.root, *key.split("/")), "rb", buffering=0) as f:
            while block := f.read(READ_BLOCK):
                yield block


# == Azure =================================================================================
def _azure() -> Any:
    try:
        blob = importlib.import_module("azure.storage.blob")
    except ImportError:
        raise UsageError(f"az:// locations need azure-storage-blob: {BLOB_HINT}") from None
    return blob


def _azure_error(what: str, e: Exception) -> StoreError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return StoreError(f"{what}: {msg}")


class AzureStore:
    """A container (and a prefix in it) of an Azure storage account."""

    def __init__(
        self, service: Any, container: str, prefix: str, display: str, *, reader: Any = None
    ) -> None:
        self.service = service  # the account's primary endpoint
        self.reader = reader or service  # where the objects are read: primary or secondary
        self.container = self.reader.get_container_client(container)
        self.prefix = prefix + "/" if prefix else ""
        self.display = display

    @classmethod
    def from_environment(
        cls, container: str, prefix: str, *, display: str, account: str | None = None
    ) -> AzureStore:
        """Credentials as the Azure tools take them: ``AZURE_STORAGE_CONNECTION_STRING``,
        or ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY`` or
        ``AZURE_STORAGE_SAS_TOKEN``.

        ``account`` (``az://CONTAINER@ACCOUNT``) may name the credentials' account, or
        ``ACCOUNT-secondary``: its read-access geo-secondary, read with the same
        credentials (what a geo-redundant copy is compared against)."""
        blob = _azure()
        env = os.environ
        try:
            if env.get("AZURE_STORAGE_CONNECTION_STRING"):
                service = blob.BlobServiceClient.from_connection_string(
                    env["AZURE_STORAGE_CONNECTION_STRING"]
                )
            elif env.get("AZURE_STORAGE_ACCOUNT_NAME"):
                name = env["AZURE_STORAGE_ACCOUNT_NAME"]
                credential: Any = env.get("AZURE_STORAGE_SAS_TOKEN")
                if env.get("AZURE_STORAGE_ACCOUNT_KEY"):
                    key = env["AZURE_STORAGE_ACCOUNT_KEY"]
                    credential = {"account_name": name, "account_key": key}
                service = blob.BlobServiceClient(
                    f"https://{name}.blob.core.windows.net", credential=credential
                )
            else:
                raise UsageError(
                    f"{display}: no Azure credentials: set AZURE_STORAGE_CONNECTION_STRING, or "
                    "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
                    "AZURE_STORAGE_SAS_TOKEN"
                )
        except ValueError as e:
            raise UsageError(f"{display}: bad Azure credentials: {e}") from None
        store = cls(service, container, prefix, display)
        name = service.account_name
        if account is None or account == name:
            return store
        if account != f"{name}-secondary":
            raise UsageError(
                f"{display}: the credentials are for account {name}: give az://{container} "
                f"(its primary) or az://{container}@{name}-secondary (its geo-secondary)"
            )
        reader = blob.BlobServiceClient(store.secondary_url(), credential=service.credential)
        return cls(service, container, prefix, display, reader=reader)

    def list(self) -> Iterator[ObjectInfo]:
        from azure.core.exceptions import AzureError

        cut = len(self.prefix)
        try:
            pages = self.container.list_blobs(
                name_starts_with=self.prefix or None, results_per_page=AZURE_PAGE
            )
            for b in pages:
                md5 = b.content_settings.content_md5 if b.content_settings else None
                yield ObjectInfo(b.name[cut:], b.size, bytes(md5) if md5 else None)
        except AzureError as e:
            raise _azure_error(f"cannot list {self.display}", e) from None

    def read(self, key: str) -> Iterator[bytes]:
        from azure.core.exceptions import AzureError

        try:
            yield from self.container.download_blob(self.prefix + key).chunks()
        except AzureError as e:
            raise _azure_error(f"cannot read {self.display}/{key}", e) from None

    def secondary_url(self) -> str:
        """The account's secondary endpoint: ``ACCOUNT-secondary.HOST`` on Azure, the
        path ``/ACCOUNT-secondary`` on a path-style endpoint (Azurite)."""
        account = self.service.account_name
        parts = urllib.parse.urlsplit(self.service.url)
        host = parts.netloc
        if host.startswith(account + "."):
            return f"{parts.scheme}://{account}-secondary{host[len(account) :]}/"
        return f"{parts.scheme}://{host}/{account}-secondary/"

    def geo_stats(self) -> GeoStats:
        """Get Blob Service Stats, asked of the secondary endpoint (the only one that
        answers it). An account that is not read-access geo-redundant refuses."""
        from azure.core.exceptions import AzureError

        blob = _azure()
        url = self.secondary_url()
        host = urllib.parse.urlsplit(url).netloc
        client = blob.BlobServiceClient(
            url, credential=self.service.credential, secondary_hostname=host
        )
        try:
            stats = client.get_service_stats()
        except AzureError as e:
            raise _azure_error(
                f"{self.display}: the account's secondary ({url}) gives no replication "
                "status (not a read-access geo-redundant account?)",
                e,
            ) from None
        geo = stats.get("geo_replication") or {}
        last = geo.get("last_sync_time")
        return GeoStats(
            str(geo.get("status") or "unknown"),
            last if isinstance(last, dt.datetime) else None,
            emulator=self.service.account_name == "devstoreaccount1",
        )


# == S3, GCS ===============================================================================
def _obstore() -> Any:
    try:
        obstore = importlib.import_module("obstore")
    except ImportError:
        raise UsageError(f"s3:// and gs:// locations need obstore: {BLOB_HINT}") from None
    return obstore


class ObstoreStore:
    """A bucket (and a prefix in it) through obstore; any obstore store serves."""

    def __init__(self, store: Any, prefix: str, display: str) -> None:
        self.store = store
        self.prefix = prefix + "/" if prefix else ""
        self.display = display

    @classmethod
    def from_url(cls, url: str, prefix: str, display: str) -> ObstoreStore:
        obstore = _obstore()
        try:
            store = obstore.store.from_url(url)
        except Exception as e:  # obstore raises its own tree and ValueError alike
            raise UsageError(f"{display}: {e}") from None
        return cls(store, prefix, display)

    def list(self) -> Iterator[ObjectInfo]:
        obstore = _obstore()
        cut = len(self.prefix)
        try:
            for batch in obstore.list(self.store, self.prefix or None, chunk_size=1000):
                for meta in batch:
                    yield ObjectInfo(meta["path"][cut:], meta["size"])
        except Exception as e:
            raise StoreError(f"cannot list {self.display}: {e}") from None

    def read(self, key: str) -> Iterator[bytes]:
        obstore = _obstore()
        try:
            for block in obstore.get(self.store, self.prefix + key).stream(READ_BLOCK):
                yield bytes(block)
        except Exception as e:
            raise StoreError(f"cannot read {self.display}/{key}: {e}") from None
