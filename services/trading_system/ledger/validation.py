"""Input checks shared by the ledger operations: refuse bad input before touching the database."""

from __future__ import annotations

from trading_system.ledger.errors import LedgerValidationError

# BIGINT: larger amounts would fail in the database after other statements ran.
MAX_AMOUNT = 2**63 - 1
MAX_ID_LENGTH = 200


def require_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise LedgerValidationError(
            f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters"
        )
    return value


def require_amount(name: str, value: object, *, allow_zero: bool = False) -> int:
    # bool is an int subclass; True as an amount is a bug, not one unit.
    if not isinstance(value, int) or isinstance(value, bool):
        raise LedgerValidationError(f"{name} must be an integer in minor units, got {type(value).__name__}")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_AMOUNT:
        raise LedgerValidationError(f"{name} must be between {low} and {MAX_AMOUNT}, got {value}")
    return value
