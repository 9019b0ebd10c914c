"""JSON logs with the request and transaction id of the current task in every line.

The ids live in context variables, so they follow an asyncio task (and the tasks it
spawns) without being passed through every call.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
transaction_id: ContextVar[str | None] = ContextVar("transaction_id", default=None)

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
            "transaction_id": transaction_id.get(),
        }
        # Fields passed with ``extra=`` become top-level keys.
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure_service_logging(service: str) -> None:
    """JSON lines when ``TRADING_SYSTEM_LOG_FORMAT=json`` (what the operator sets), else plain text."""
    level = os.environ.get("TRADING_SYSTEM_LOG_LEVEL", "INFO")
    if os.environ.get("TRADING_SYSTEM_LOG_FORMAT", "").lower() == "json":
        configure_logging(service, level)
    else:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
