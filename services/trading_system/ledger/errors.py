"""Typed ledger errors. Each one means: nothing was changed by the failed call.

(:class:`~trading_system.storage.fencing.FencedError` is the one more the ledger raises;
it lives with the fence helpers because the matching journal raises it too.)
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every ledger refusal."""


class LedgerValidationError(LedgerError, ValueError):
    """Malformed input: negative or zero amount, empty id, too large a number."""


class UnknownAccountError(LedgerError):
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"unknown account {account_id!r}")


class UnknownAssetError(LedgerError):
    def __init__(self, asset: str) -> None:
        self.asset = asset
        super().__init__(f"unknown asset {asset!r}")


class InsufficientFundsError(LedgerError):
    """Not enough available balance; the coordinator turns this into a NO vote."""

    def __init__(self, account_id: str, asset: str, requested: int, available: int) -> None:
        self.account_id = account_id
        self.asset = asset
        self.requested = requested
        self.available = available
        super().__init__(
            f"insufficient {asset} in {account_id!r}: requested {requested}, available {available}"
        )


class HoldNotFoundError(LedgerError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no hold for {key!r}")


class HoldStateError(LedgerError):
    """The hold cannot do that in its state (e.g. binding a released hold)."""


class IdempotencyConflictError(LedgerError):
    """The same idempotency key (hold id, deposit id, trade id) came with different content."""


class RetryableConflictError(LedgerError):
    """Another transaction wrote the same key at the same moment; retrying is safe.

    The retry finds the other transaction's result and answers idempotently.
    """
