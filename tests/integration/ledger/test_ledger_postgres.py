"""The ledger contract on the real store: PostgreSQL 15 over asyncpg."""

from __future__ import annotations

import pytest

from tests.unit.ledger.contract import LedgerContract

pytestmark = pytest.mark.integration


class TestLedgerOnPostgres(LedgerContract):
    """Uses the ``engine`` fixture of this package's conftest."""
