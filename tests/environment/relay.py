"""A TCP relay: ``python -m tests.environment.relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT``.

The real-pods node (``tests/environment/node.py``) runs one to make the API server, which
listens on loopback only, reachable from pods: the ``kubernetes`` Service's endpoint is the
node's bridge address, where this relays each connection to the API server's loopback port.
(An iptables DNAT to 127.0.0.1 cannot do it: kube-proxy's DNAT to the endpoint comes first,
and an EndpointSlice may not hold a loopback address.) TLS passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target_host: str,
    target_port: int,
    live: set[asyncio.StreamWriter] | None = None,
) -> None:
    """Relay one accepted connection to the target until either side closes. ``live``, if
    given, holds both ends while they are open (so an owner can abort them)."""
    try:
        up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
    except OSError:
        writer.close()
        return
    ends = {writer, up_writer}
    if live is not None:
        live |= ends
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    if live is not None:
        live -= ends


async def main(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await relay(reader, writer, target_host, target_port)

    server = await asyncio.start_server(handle, listen_host, listen_port, reuse_address=True)
    print(f"relaying {listen_host}:{listen_port} -> {target_host}:{target_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    host, port, target, target_port = sys.argv[1:5]
    asyncio.run(main(host, int(port), target, int(target_port)))
