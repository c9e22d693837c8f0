"""A loopback TCP proxy that cuts connections on cue: connection faults for tests.

Put it between a client and a server (``CutProxy(server_port)``, then connect to
``proxy.port``) and it forwards bytes both ways until told otherwise:

* ``cut_after=N``: once the server has sent N bytes in all (mid-COPY, mid-query), every
  connection is aborted (TCP RST) and new ones are refused, as a dead network would;
* :meth:`cut` does the same at once; :meth:`heal` accepts connections again.

Loopback only, asyncio only, no privileges: the fault a real network cut gives a
client (a reset connection, then refused reconnects), without killing the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class CutProxy:
    """See the module docs. ``cuts`` counts the connections it aborted."""

    server_port: int
    cut_after: int | None = None
    server_host: str = "127.0.0.1"
    port: int = 0
    down_bytes: int = 0
    cuts: int = 0
    connections: int = 0
    refusing: bool = False
    _server: asyncio.Server | None = field(default=None, repr=False)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def cut(self) -> None:
        """Abort every connection now and refuse new ones until :meth:`heal`."""
        self.refusing = True
        for writer in list(self._writers):
            self._abort(writer)

    def heal(self) -> None:
        self.refusing = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> CutProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _abort(self, writer: asyncio.StreamWriter) -> None:
        if writer in self._writers:
            self._writers.discard(writer)
            self.cuts += 1
        transport = writer.transport
        if not transport.is_closing():
            transport.abort()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(self.server_host, self.server_port)
        except OSError:
            client_w.transport.abort()
            return
        self.connections += 1
        self._writers.update((client_w, server_w))
        await asyncio.gather(
            self._pipe(client_r, server_w, down=False),
            self._pipe(server_r, client_w, down=True),
        )
        for writer in (client_w, server_w):
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if down:
                    self.down_bytes += len(data)
                    if self.cut_after is not None and self.down_bytes >= self.cut_after:
                        self.cut()
                        return
        except (OSError, RuntimeError):
            pass
        finally:
            if writer in self._writers:
                with contextlib.suppress(Exception):
                    writer.close()
