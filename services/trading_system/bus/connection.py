"""A robust aio-pika connection that fails over across the nodes of a RabbitMQ cluster.

aio-pika's ``RobustConnection`` reconnects and restores channels, exchanges, queues,
bindings and consumers by itself, but only ever to the one URL it was given; when that
node is dead it retries the dead node forever. This subclass keeps the cluster's URLs and
moves to the next one before every connection attempt, so a client on a killed node is
back on a surviving node after one ``reconnect_interval``.

The hook: before each attempt RobustConnection clears ``self.transport``; it is the one
point the library passes through on every attempt, so ``transport`` is a property whose
setter picks the next URL when it is cleared.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import UnderlayConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from trading_system.bus.errors import BrokerUnavailableError

log = logging.getLogger(__name__)


class ClusterRobustConnection(RobustConnection):
    def __init__(self, url: URL, *, cluster_urls: Sequence[URL] = (), **kwargs: Any) -> None:
        # Set before the base __init__, which already assigns ``transport``.
        self._cluster_urls = tuple(cluster_urls) or (URL(url),)
        self._cursor = 0
        self._attempts = 0
        self._transport: UnderlayConnection | None = None
        super().__init__(url, **kwargs)

    @property
    def transport(self) -> UnderlayConnection | None:
        return self._transport

    @transport.setter
    def transport(self, value: UnderlayConnection | None) -> None:
        self._transport = value
        # The base __init__ clears it before ``url`` exists and close() clears it after
        # ``_close_called``; neither is a connection attempt.
        if value is not None or not hasattr(self, "url") or self._close_called:
            return
        self._attempts += 1
        if self._attempts > 1:
            self._advance()

    def _advance(self) -> None:
        if len(self._cluster_urls) < 2:
            return
        self._cursor = (self._cursor + 1) % len(self._cluster_urls)
        self.url = self._cluster_urls[self._cursor]
        log.info("next connection attempt goes to %s", self)

    @property
    def current_url(self) -> URL:
        return self.url


async def connect_cluster(
    urls: Sequence[str],
    *,
    connection_name: str,
    connect_timeout: float,
    reconnect_interval: float,
    heartbeat: int,
    first: int = 0,
) -> ClusterRobustConnection:
    """Connect to the first reachable node counting from ``urls[first]``; later
    reconnects rotate through all of them."""
    if not urls:
        raise BrokerUnavailableError("no RabbitMQ URLs configured")
    parsed = [
        URL(u).update_query(heartbeat=heartbeat, reconnect_interval=reconnect_interval, name=connection_name)
        for u in urls
    ]
    errors: list[str] = []
    for step in range(len(parsed)):
        start = (first + step) % len(parsed)
        ordered = parsed[start:] + parsed[:start]
        # connect_robust() would pass extra keyword arguments into the URL query, so the
        # connection is built the way connect_robust builds it, with the URL list aside.
        connection = ClusterRobustConnection(ordered[0], cluster_urls=ordered)
        try:
            await asyncio.wait_for(connection.connect(timeout=connect_timeout), connect_timeout + 1)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
            await connection.close()
            errors.append(f"{ordered[0].with_password('***')}: {exc!r}")
            continue
        return connection
    raise BrokerUnavailableError("no RabbitMQ node reachable: " + "; ".join(errors))
