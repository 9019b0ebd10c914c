"""Bearer tokens: one set for the public API, a separate set for admin endpoints.

Tokens come from the environment (filled from Kubernetes Secrets) or from files mounted
from Secrets; they are compared in constant time so response timing leaks nothing.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Scope(StrEnum):
    API = "api"
    ADMIN = "admin"


@dataclass(frozen=True)
class TokenSet:
    api: tuple[str, ...]
    admin: tuple[str, ...]

    @classmethod
    def from_env(cls, prefix: str = "TRADING_SYSTEM") -> TokenSet:
        # The singular name is what the operator's pods get from their Secret; the plural
        # one lets a rotation carry the old and the new token side by side.
        return cls(
            api=_read_tokens(f"{prefix}_API_TOKEN", f"{prefix}_API_TOKENS"),
            admin=_read_tokens(f"{prefix}_ADMIN_TOKEN", f"{prefix}_ADMIN_TOKENS"),
        )

    def allows(self, header: str | None, scope: Scope) -> bool:
        token = _bearer(header)
        if token is None:
            return False
        allowed = self.admin if scope is Scope.ADMIN else self.api + self.admin
        # Check every candidate so the time taken does not depend on which one matched.
        matched = False
        for candidate in allowed:
            matched |= hmac.compare_digest(candidate.encode(), token.encode())
        return matched


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _read_tokens(*variables: str) -> tuple[str, ...]:
    """Each ``VAR`` holds comma-separated tokens; ``VAR_FILE`` names a file with one per line."""
    raw = ""
    for var in variables:
        raw += "," + os.environ.get(var, "")
        file = os.environ.get(f"{var}_FILE")
        if file:
            raw += "," + Path(file).read_text()
    tokens = (t.strip() for t in raw.replace("\n", ",").split(","))
    return tuple(dict.fromkeys(t for t in tokens if t))
