"""Shorter failure messages when the store refuses the text (issue 12, point 5)."""

from __future__ import annotations

import pytest

from control_plane.queue.store_errors import fallback_messages

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("message", "lengths"),
    [
        ("short", [5]),
        ("x" * 40, [40]),
        ("x" * 41, [41, 40]),
        ("x" * 200, [200, 40]),
        ("x" * 201, [201, 200, 40]),
        ("x" * 4000, [4000, 200, 40]),
    ],
)
def test_fallback_messages_get_strictly_shorter(message: str, lengths: list[str]) -> None:
    out = fallback_messages(message)
    assert [len(m) for m in out] == lengths
    assert out[0] == message
    assert all(m.endswith("...") for m in out[1:])
