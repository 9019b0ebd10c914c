"""The process lifecycle every service shares: start, serve until told to stop, stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signalled(service: Service, stop: asyncio.Event) -> None:
    """Start ``service``, serve until SIGTERM/SIGINT (or ``stop`` is set), then stop it.

    SIGTERM is what the kubelet sends on pod deletion: stopping cleanly lets a member
    release its consumers and a batch in flight finish within the grace period.
    """
    await service.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await service.stop()
