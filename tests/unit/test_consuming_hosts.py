"""Which hosts may be handed a message of a type: those with a thread consuming it."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.capacity import consuming_hosts

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("workers", "mode", "expected"),
    [
        ({}, "index", set()),
        ({"a-1-t1": {"host": "a", "types": None}}, "index", {"a"}),  # every queue
        ({"a-1-t1": {"host": "a"}}, "acte", {"a"}),  # older entry without types: all
        ({"b-1-t1": {"host": "b", "types": ["acte"]}}, "index", set()),  # -Q ocr-acte
        ({"b-1-t1": {"host": "b", "types": ["acte"]}}, "acte", {"b"}),
        (
            {"b-1-t1": {"host": "b", "types": ["acte"]}, "b-2-t1": {"host": "b", "types": []}},
            "index",
            {"b"},  # another process on b runs every queue
        ),
        ({"x": {"invalid": True}}, "index", set()),  # a corrupt entry names no host
        ({"a-1-t1": {"host": "a", "types": None, "draining": True}}, "index", set()),
        (
            {"a-1-t1": {"host": "a", "draining": True}, "a-2-t1": {"host": "a"}},
            "index",
            {"a"},  # another process on a still runs
        ),
    ],
)
def test_consuming_hosts(workers: dict[str, Any], mode: str, expected: set[str]) -> None:
    assert consuming_hosts(workers, mode) == expected
