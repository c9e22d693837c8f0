"""A TCP proxy that shapes a link in user space: added round-trip delay and a bandwidth
cap, for tests and benchmarks of slow (geo) links on loopback. These machines' kernels
have no ``netem``.

Each direction is delayed by half the round trip and paced to ``mbit_s`` on its own, as
on a symmetric WAN link: a byte that arrives at ``t`` leaves at ``t + rtt/2`` at the
earliest, and the bytes leave no faster than the cap.

>>> async with LinkProxy("127.0.0.1", 5432, rtt_ms=40, mbit_s=100) as proxy:
...     dsn = f"postgresql://app@127.0.0.1:{proxy.port}/shop"
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from types import TracebackType

#: Bytes read at once: small enough that pacing stays smooth at 100 Mbit/s (5 ms each).
READ_BYTES = 64 << 10
#: Pieces in flight per direction (at most 4 MB): far above 100 Mbit/s x 40 ms.
QUEUE_PIECES = 64


@dataclass
class LinkProxy:
    """Listens on ``127.0.0.1:port`` (a free port unless given) and forwards every
    connection to ``host:upstream_port`` through the shaped link."""

    host: str
    upstream_port: int
    rtt_ms: float = 0.0
    #: the cap of each direction; 0: unlimited
    mbit_s: float = 0.0
    port: int = 0
    #: bytes carried towards the client / towards the server (for reports and tests)
    bytes_down: int = 0
    bytes_up: int = 0
    _server: asyncio.Server | None = None
    #: when each direction of the capped wire is free next, shared by all connections:
    #: the cap is the link's, not each connection's
    _free_at: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            with contextlib.suppress(OSError):
                await self._server.wait_closed()

    async def __aenter__(self) -> LinkProxy:
        return await self.start()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_w.close()
            return
        up = asyncio.ensure_future(self._pipe(client_r, server_w, "up"))
        down = asyncio.ensure_future(self._pipe(server_r, client_w, "down"))
        for task in (up, down):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for w in (client_w, server_w):
            w.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, way: str) -> None:
        """Read as fast as the sender sends, deliver each piece half a round trip later,
        paced to the cap (a queue between the two, like bytes in flight on a wire)."""
        delay = self.rtt_ms / 2000.0
        rate = self.mbit_s * 1e6 / 8 if self.mbit_s > 0 else 0.0
        # bounded: a sender faster than the cap is held back, as TCP would hold it
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=QUEUE_PIECES)

        async def deliver() -> None:
            free_at = self._free_at
            while True:
                arrived, data = await queue.get()
                if not data:
                    if w.can_write_eof():
                        w.write_eof()
                    return
                now = time.monotonic()
                tx = len(data) / rate if rate else 0.0
                start = max(now, free_at[way], arrived + delay - tx)
                free_at[way] = done = start + tx
                if done > now:
                    await asyncio.sleep(done - now)
                w.write(data)
                await w.drain()
                if way == "down":
                    self.bytes_down += len(data)
                else:
                    self.bytes_up += len(data)

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await r.read(READ_BYTES)
                await queue.put((time.monotonic(), data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender
