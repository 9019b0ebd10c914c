"""Deciding, without a server round trip, whether a child needs to be applied again.

A child is up to date when every field the operator sets has the same value on the
server (the server adds defaults, which are ignored) and its ``applied-hash`` annotation
matches. The hash catches a field the operator stopped setting, which a subset comparison
cannot see; the comparison catches a field someone edited, which the hash cannot see.
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from trading_operator import api
from trading_operator.spec import stable_hash

APPLIED_HASH = f"{api.GROUP}/applied-hash"

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]*)$")
_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def quantity(value: Any) -> Decimal | None:
    """A resource.Quantity as a number, or None if ``value`` is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value)
    if match is None or match.group(2) not in _SUFFIXES:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation:
        return None


def _scalar_equal(desired: Any, actual: Any) -> bool:
    if desired == actual:
        return True
    # The server canonicalises quantities ("1024Mi" comes back as "1Gi", 2 as "2").
    left, right = quantity(desired), quantity(actual)
    return left is not None and left == right


def _empty(value: Any) -> bool:
    # The server omits empty lists and maps ("ingress: []") and zero values of omitempty
    # fields ("initialDelaySeconds: 0"), so absent means the same.
    return not value


def subset_equal(desired: Any, actual: Any) -> bool:
    """Whether everything in ``desired`` is present and equal in ``actual``."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        return all(
            subset_equal(value, actual[key]) if key in actual else _empty(value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(subset_equal(d, a) for d, a in zip(desired, actual, strict=True))
    return _scalar_equal(desired, actual)


def with_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(manifest)
    annotations = result["metadata"].setdefault("annotations", {})
    annotations.pop(APPLIED_HASH, None)
    annotations[APPLIED_HASH] = stable_hash(result)
    return result


def needs_apply(desired: dict[str, Any], actual: dict[str, Any] | None) -> bool:
    """``desired`` must come from ``with_applied_hash``."""
    if actual is None:
        return True
    wanted = desired["metadata"]["annotations"][APPLIED_HASH]
    if (actual.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH) != wanted:
        return True
    return not subset_equal(desired, actual)


def key(obj: dict[str, Any]) -> tuple[str, str]:
    """Identity of a child within its TradingSystem (one namespace)."""
    return obj["kind"], obj["metadata"]["name"]
