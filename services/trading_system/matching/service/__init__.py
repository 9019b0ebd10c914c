"""The matching engine service around the pure core: journal, fencing, runner, process."""

from trading_system.matching.service.codec import (
    command_from_dict,
    command_to_dict,
    decode_command,
    encode_command,
)
from trading_system.matching.service.engine_runner import (
    EngineRunner,
    EntryEvents,
    EventBatch,
    NotActiveError,
    Publisher,
    Role,
    SubmitResult,
)
from trading_system.matching.service.journal import (
    MATCHING_COMPONENT,
    MATCHING_MIGRATIONS,
    AppendResult,
    Journal,
    JournalEntry,
    Snapshot,
    migrate_matching,
)

__all__ = [
    "MATCHING_COMPONENT",
    "MATCHING_MIGRATIONS",
    "AppendResult",
    "EngineRunner",
    "EntryEvents",
    "EventBatch",
    "Journal",
    "JournalEntry",
    "NotActiveError",
    "Publisher",
    "Role",
    "Snapshot",
    "SubmitResult",
    "command_from_dict",
    "command_to_dict",
    "decode_command",
    "encode_command",
    "migrate_matching",
]
