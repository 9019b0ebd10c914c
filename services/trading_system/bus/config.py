"""Bus settings, from arguments or the environment.

``TRADING_SYSTEM_MESSAGE_BUS_MODE`` picks the transport: ``rabbitmq`` (the default; an
unreachable broker is an error), ``in_memory`` (demo, unit tests) or ``auto`` (RabbitMQ
if reachable, otherwise in-memory with a warning, a metric and degraded health).
The default is ``rabbitmq`` because a forgotten variable must not turn a production
service into one that keeps messages in its own memory.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from trading_system.bus.errors import ConfigurationError
from trading_system.bus.topology import DEFAULT_EXCHANGE

MODE_ENV = "TRADING_SYSTEM_MESSAGE_BUS_MODE"
URLS_ENV = "TRADING_SYSTEM_RABBITMQ_URLS"
SERVICE_ENV = "TRADING_SYSTEM_SERVICE_NAME"


class BusMode(enum.StrEnum):
    RABBITMQ = "rabbitmq"
    IN_MEMORY = "in_memory"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: str | BusMode) -> BusMode:
        try:
            return cls(str(value).strip().lower().replace("-", "_"))
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigurationError(f"{MODE_ENV}={value!r} is not one of: {choices}") from None


@dataclass(frozen=True, slots=True)
class BusSettings:
    mode: BusMode = BusMode.RABBITMQ
    urls: tuple[str, ...] = ()
    service: str = "unknown"
    default_exchange: str = DEFAULT_EXCHANGE
    connect_timeout: float = 5.0
    reconnect_interval: float = 1.0
    heartbeat: int = 10
    publish_timeout: float = 10.0
    publish_attempts: int = 3
    max_in_flight: int = 1000
    max_batch_size: int = 1000
    prefetch: int = 200
    breaker_failure_threshold: int = 5
    breaker_reset_timeout: float = 5.0
    handler_timeout: float | None = None
    validate_on_publish: bool = False
    depth_poll_interval: float = 15.0

    def __post_init__(self) -> None:
        # Accept plain strings ("in_memory") from callers; identity checks need the enum.
        object.__setattr__(self, "mode", BusMode.parse(self.mode))
        object.__setattr__(self, "urls", parse_urls(self.urls))
        if self.publish_attempts < 1 or self.max_in_flight < 1 or self.prefetch < 1:
            raise ConfigurationError("publish_attempts, max_in_flight and prefetch must be >= 1")
        if self.max_batch_size < 1:
            raise ConfigurationError("max_batch_size must be >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> BusSettings:
        """Settings from the environment; explicit ``overrides`` (not None) win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get(MODE_ENV):
            values["mode"] = BusMode.parse(env[MODE_ENV])
        if env.get(URLS_ENV):
            values["urls"] = parse_urls(env[URLS_ENV])
        if env.get(SERVICE_ENV):
            values["service"] = env[SERVICE_ENV]
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigurationError(f"unknown bus settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> BusSettings:
        return replace(self, **changes)


def parse_urls(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(u.strip() for u in items if u and u.strip())
