"""Exceptions of the message bus, and the classification consumers act on.

Handlers tell the bus what to do with a failed message by the exception they raise:
``TransientError`` (try again later), ``PermanentError`` (will never succeed: dead-letter
now) or ``PoisonMessageError`` (park it for a human). Other exceptions are classified by
``ErrorClassifier``; anything it does not recognise counts as *unknown* and is redelivered,
so a message that keeps failing in a way nobody foresaw ends up parked by the delivery
limit instead of looping forever.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from trading_system.bus.envelope import Envelope
    from trading_system.bus.messages import BusMessage


class BusError(Exception):
    """Base class of everything the bus raises."""


class ConfigurationError(BusError):
    """The bus was configured in a way that cannot work (bad mode, no URLs, ...)."""


class BrokerUnavailableError(BusError):
    """No broker node could be reached (and the mode does not allow a fallback)."""


class DeliveryLostError(BusError):
    """A delivery could not be settled because its channel is gone; the broker redelivers it."""


class PublishError(BusError):
    """A publish was not confirmed by the broker; the message may or may not be queued."""


class PublishNackedError(PublishError):
    """The broker refused the message (basic.nack), e.g. a full queue with reject-publish."""


class UnroutableError(PublishError):
    """The broker returned the message: no queue is bound for its routing key."""


class PublishTimeoutError(PublishError):
    """No confirm arrived in time (quorum lost, broker overloaded, connection lost)."""


class CircuitOpenError(PublishError):
    """Publishing is suspended because the circuit breaker is open."""


class PublishManyError(PublishError):
    """Some messages of a pipelined publish were not confirmed; ``failed`` says which."""

    def __init__(self, failed: list[tuple[Envelope[BusMessage], BaseException]], total: int) -> None:
        self.failed = failed
        super().__init__(f"{len(failed)} of {total} messages not confirmed; first error: {failed[0][1]!r}")


class MessageValidationError(BusError, ValueError):
    """A message does not match its schema, or its type/version is not in the catalog."""


class MessageDecodeError(MessageValidationError):
    """Bytes from the wire could not be turned into an envelope and a typed message."""


class TransientError(BusError):
    """Raised by a handler: the failure may go away (a dependency is down); retry later."""


class PermanentError(BusError):
    """Raised by a handler: the message can never be processed; dead-letter it at once."""


class PoisonMessageError(BusError):
    """Raised by a handler: park the message for an operator without further attempts."""


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    POISON = "poison"
    UNKNOWN = "unknown"


# Timeouts and connection problems are the textbook transient failures; schema and value
# errors are deterministic, so retrying them only delays the dead-lettering.
DEFAULT_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    TimeoutError,
    asyncio.TimeoutError,
    ConnectionError,
)
DEFAULT_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    MessageValidationError,
    ValidationError,
    ValueError,
    TypeError,
    KeyError,
    LookupError,
)
DEFAULT_POISON: tuple[type[BaseException], ...] = (PoisonMessageError,)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "a server went away" (asyncpg's, when installed), whatever wraps them."""
    try:
        from asyncpg import exceptions as pg  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - asyncpg is a dependency of the services
        return (ConnectionError,)
    return (ConnectionError, pg.PostgresConnectionError, pg.OperatorInterventionError, pg.InterfaceError)


_CONNECTION_ERRORS = _connection_errors()


def lost_connection(exc: BaseException) -> bool:
    """Did a handler fail because a server (PostgreSQL, say) was unreachable or restarting?

    Such a failure is transient whatever the library wrapped it in (SQLAlchemy raises a
    ``DBAPIError`` with the driver's error as its cause), so the whole cause chain is
    looked at. Treating it as unknown would requeue at once and burn through the
    delivery limit in a tight loop while the database restarts, parking good messages.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _CONNECTION_ERRORS) or getattr(current, "connection_invalidated", False):
            return True
        current = current.__cause__ or current.__context__
    return False


class ErrorClassifier:
    """Maps an exception to an ``ErrorKind``; services can add their own exception types."""

    def __init__(
        self,
        transient: Iterable[type[BaseException]] = DEFAULT_TRANSIENT,
        permanent: Iterable[type[BaseException]] = DEFAULT_PERMANENT,
        poison: Iterable[type[BaseException]] = DEFAULT_POISON,
    ) -> None:
        self._transient = tuple(transient)
        self._permanent = tuple(permanent)
        self._poison = tuple(poison)

    def classify(self, exc: BaseException) -> ErrorKind:
        # Poison and the explicit bus classes first: a PermanentError subclassing
        # ValueError must not be mistaken for something else by a broader rule.
        if isinstance(exc, self._poison):
            return ErrorKind.POISON
        if isinstance(exc, TransientError):
            return ErrorKind.TRANSIENT
        if isinstance(exc, PermanentError):
            return ErrorKind.PERMANENT
        if isinstance(exc, self._transient) or lost_connection(exc):
            return ErrorKind.TRANSIENT
        if isinstance(exc, self._permanent):
            return ErrorKind.PERMANENT
        return ErrorKind.UNKNOWN
