"""The base of every typed bus message and the registry that maps wire names to classes.

A message class names itself with ``message_type`` (dotted, subsystem first, e.g.
``order.new``) and ``version``. A change that old consumers cannot read is a new class with
the same ``message_type`` and a higher ``version``; both stay registered while producers
and consumers migrate, so a redelivered old message is still understood.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from trading_system.bus.errors import MessageValidationError


class BusMessage(BaseModel):
    """A typed, versioned message. Instances are immutable so a validated one stays valid."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    message_type: ClassVar[str] = ""
    version: ClassVar[int] = 1

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Abstract intermediate bases (no type yet) are allowed; concrete ones must be named.
        if cls.message_type and (not isinstance(cls.version, int) or cls.version < 1):
            raise TypeError(f"{cls.__name__}.version must be a positive int")

    @classmethod
    def key(cls) -> tuple[str, int]:
        return (cls.message_type, cls.version)


class MessageRegistry:
    """Message classes by (type, version); the catalog a bus validates against."""

    def __init__(self, classes: Iterable[type[BusMessage]] = ()) -> None:
        self._by_key: dict[tuple[str, int], type[BusMessage]] = {}
        self._classes: set[type[BusMessage]] = set()
        self._latest: dict[str, type[BusMessage]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[BusMessage]) -> type[BusMessage]:
        if not cls.message_type:
            raise TypeError(f"{cls.__name__} has no message_type")
        existing = self._by_key.get(cls.key())
        if existing is not None and existing is not cls:
            raise TypeError(
                f"{cls.message_type} v{cls.version} is already registered by {existing.__qualname__}"
            )
        self._by_key[cls.key()] = cls
        self._classes.add(cls)
        latest = self._latest.get(cls.message_type)
        if latest is None or latest.version < cls.version:
            self._latest[cls.message_type] = cls
        return cls

    def __contains__(self, cls: object) -> bool:
        # A set lookup: this runs for every published message.
        return cls in self._classes

    def __iter__(self) -> Iterator[type[BusMessage]]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def resolve(self, message_type: str, version: int | None = None) -> type[BusMessage]:
        cls = self._latest.get(message_type) if version is None else self._by_key.get((message_type, version))
        if cls is None:
            known = sorted({t for t, _ in self._by_key})
            wanted = message_type if version is None else f"{message_type} v{version}"
            raise MessageValidationError(
                f"unknown message type {wanted!r}; the catalog has {len(known)} types, e.g. {known[:5]}"
            )
        return cls

    def validate(self, message_type: str, data: Mapping[str, Any], version: int | None = None) -> BusMessage:
        """Build a typed message from untrusted data, with an error that says what is wrong."""
        cls = self.resolve(message_type, version)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise MessageValidationError(describe_validation_error(cls, exc)) from exc


def describe_validation_error(cls: type[BusMessage], exc: ValidationError) -> str:
    return f"invalid {cls.message_type} v{cls.version} ({cls.__qualname__}): {format_errors(exc)}"


def format_errors(exc: ValidationError, limit: int = 10) -> str:
    """Pydantic's errors as ``field.path: problem; ...``, short enough for a log line."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:limit]
    )
