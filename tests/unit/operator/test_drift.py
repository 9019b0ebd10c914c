"""Deciding whether a child needs applying, without asking the server."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from trading_operator.drift import APPLIED_HASH, needs_apply, quantity, subset_equal, with_applied_hash

pytestmark = pytest.mark.unit

DESIRED: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "x", "namespace": "n", "labels": {"a": "1"}},
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "i:1",
                        "resources": {"requests": {"cpu": "500m", "memory": "1024Mi"}},
                    }
                ]
            }
        },
    },
}


def server_copy() -> dict[str, Any]:
    """What the API server gives back: defaults added, quantities canonicalised."""
    actual = with_applied_hash(copy.deepcopy(DESIRED))
    actual["metadata"]["resourceVersion"] = "7"
    spec = actual["spec"]
    spec["strategy"] = {"type": "RollingUpdate"}
    container = spec["template"]["spec"]["containers"][0]
    container["imagePullPolicy"] = "IfNotPresent"
    container["resources"]["requests"]["memory"] = "1Gi"
    return actual


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Decimal("0.5")), ("1Gi", Decimal(2**30)), ("2", Decimal(2)), (3, Decimal(3)), ("1e3", None)],
)
def test_quantity(text: object, value: Decimal | None) -> None:
    assert quantity(text) == value


def test_server_defaults_and_canonical_quantities_are_not_drift() -> None:
    assert not needs_apply(with_applied_hash(DESIRED), server_copy())


def test_an_edited_field_is_drift() -> None:
    actual = server_copy()
    actual["spec"]["replicas"] = 1
    assert needs_apply(with_applied_hash(DESIRED), actual)


def test_a_missing_object_or_a_changed_desire_needs_applying() -> None:
    assert needs_apply(with_applied_hash(DESIRED), None)
    changed = copy.deepcopy(DESIRED)
    del changed["metadata"]["labels"]  # dropped from the desire: only the hash sees this
    assert needs_apply(with_applied_hash(changed), server_copy())


def test_empty_and_zero_values_equal_absent_ones() -> None:
    assert subset_equal({"ingress": [], "delay": 0, "flag": False}, {})
    assert not subset_equal({"ingress": [{"ports": []}]}, {})
    assert not subset_equal({"list": [1, 2]}, {"list": [1]})


def test_hash_is_stable_and_ignores_a_previous_hash() -> None:
    once = with_applied_hash(DESIRED)
    assert (
        with_applied_hash(once)["metadata"]["annotations"][APPLIED_HASH]
        == once["metadata"]["annotations"][APPLIED_HASH]
    )
    assert "annotations" not in DESIRED["metadata"], "the input is not modified"
