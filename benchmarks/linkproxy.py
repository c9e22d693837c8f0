"""Shape a link to a server in user space: ``python benchmarks/linkproxy.py HOST:PORT
--rtt-ms 40 --mbit 100`` listens on a free loopback port (printed) and forwards to
``HOST:PORT`` with that added round trip and bandwidth cap (see
:mod:`replverify.testing.linkproxy`). Loopback only; no ``netem`` needed."""

from __future__ import annotations

import argparse
import asyncio

from replverify.testing.linkproxy import LinkProxy


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("upstream", help="HOST:PORT of the server")
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--mbit", type=float, default=100.0, help="cap per direction; 0: none")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    async with LinkProxy(host, int(port), args.rtt_ms, args.mbit, args.port) as proxy:
        print(
            f"127.0.0.1:{proxy.port} -> {args.upstream}, rtt {args.rtt_ms} ms, {args.mbit} Mbit/s",
            flush=True,
        )
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
