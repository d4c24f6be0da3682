"""No hoarding: how many messages a worker process's consumer may fetch (InHand.room)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from control_plane.dispatch import InHand

pytestmark = pytest.mark.unit


@dataclass
class Consumer:
    """The two attributes of a Dramatiq consumer that `room` reads."""

    prefetch: int
    outstanding_message_count: int


@pytest.mark.parametrize(
    ("capacity", "held", "prefetch", "expected"),
    [
        (None, [0], 8, 8),  # not a worker process: Dramatiq's own rule
        (None, [3], 8, 5),
        (4, [0, 0], 8, 4),  # idle process: one per thread, not 2 x threads
        (4, [3, 0], 8, 1),  # three running: room for the last idle thread only
        (4, [2, 2], 8, 0),  # every thread busy (either queue): fetch nothing
        (1, [1, 0], 2, 0),  # one thread, busy: the next message waits in Redis
        (4, [0, 1], 2, 2),  # never beyond the consumer's own prefetch
        (2, [5, 0], 8, 0),  # more held than threads (after a reconnect): none
        (0, [0, 0], 8, 0),  # draining (worker_shutdown): no thread takes a new one
    ],
)
def test_room(capacity: int | None, held: list[int], prefetch: int, expected: int) -> None:
    hand = InHand()
    hand.capacity = capacity
    consumers: list[Any] = [Consumer(prefetch, n) for n in held]
    hand.consumers = consumers
    assert hand.room(consumers[0]) == expected
