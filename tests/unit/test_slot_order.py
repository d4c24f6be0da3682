"""One slot order everywhere (status block, banner, assignments, reap): by slot number."""

from __future__ import annotations

import pytest

from control_plane.pool import by_slot_number, slot_number

pytestmark = pytest.mark.unit


def test_slots_sort_by_number_not_by_text() -> None:
    items = [("ocr-worker-10", "a"), ("ocr-worker-2", "b"), ("odd", "c"), ("ocr-worker-1", "d")]
    assert [k for k, _ in by_slot_number(items)] == [
        "ocr-worker-1",
        "ocr-worker-2",
        "ocr-worker-10",
        "odd",
    ]


@pytest.mark.parametrize(("slot", "n"), [("ocr-worker-7", 7), ("ocr-worker-x", 1 << 62)])
def test_slot_number(slot: str, n: int) -> None:
    assert slot_number(slot) == n
