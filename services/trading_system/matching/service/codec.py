"""JSON encoding of core commands for the journal and the bus (lossless round trip)."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from trading_system.matching.core import (
    AddSymbol,
    AdvanceTime,
    Cancel,
    Command,
    MassCancel,
    NewOrder,
    OrderType,
    Replace,
    Side,
    StpMode,
    SymbolSpec,
    TimeInForce,
)

_CLASSES: dict[str, type[Any]] = {
    "new": NewOrder,
    "cancel": Cancel,
    "replace": Replace,
    "mass_cancel": MassCancel,
    "advance_time": AdvanceTime,
    "add_symbol": AddSymbol,
}
_NAMES: dict[type[Any], str] = {cls: name for name, cls in _CLASSES.items()}
_ENUMS: dict[str, type[IntEnum]] = {"side": Side, "order_type": OrderType, "tif": TimeInForce}


class CommandDecodeError(ValueError):
    """The data is not a command of any known kind."""


def _enum(kind: type[IntEnum], value: Any) -> Any:
    # An out-of-range value is kept as sent: the engine rejects it with a reason
    # (INVALID_SIDE, ...) rather than the journal refusing it.
    try:
        return kind(value)
    except (ValueError, TypeError):
        return value


def command_to_dict(cmd: Command) -> dict[str, Any]:
    name = _NAMES.get(type(cmd))
    if name is None:
        raise TypeError(f"not a matching command: {cmd!r}")
    data: dict[str, Any] = {"type": name}
    for key, value in cmd._asdict().items():
        if isinstance(value, SymbolSpec):
            value = {k: int(v) if isinstance(v, IntEnum) else v for k, v in value._asdict().items()}
        elif isinstance(value, IntEnum):
            value = int(value)
        data[key] = value
    return data


def command_from_dict(data: dict[str, Any]) -> Command:
    try:
        cls = _CLASSES[data["type"]]
        fields = {k: v for k, v in data.items() if k != "type"}
        for key, kind in _ENUMS.items():
            if key in fields:
                fields[key] = _enum(kind, fields[key])
        if cls is AddSymbol:
            spec = dict(fields["spec"])
            if "stp_mode" in spec:
                spec["stp_mode"] = _enum(StpMode, spec["stp_mode"])
            fields["spec"] = SymbolSpec(**spec)
        command: Command = cls(**fields)
    except (KeyError, TypeError) as exc:
        raise CommandDecodeError(f"malformed command {data!r}: {exc!r}") from exc
    return command


def encode_command(cmd: Command) -> str:
    return json.dumps(command_to_dict(cmd), separators=(",", ":"))


def decode_command(text: str) -> Command:
    return command_from_dict(json.loads(text))


def command_id(cmd: Command) -> str:
    """The journal's dedup key: the command's ``cmd_id`` as text."""
    return str(cmd.cmd_id)


Encoder = Callable[[Command], str]
