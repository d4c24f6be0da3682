"""Retry timing: the not-before delay after a transient failure or an outage (pure)."""

from __future__ import annotations

import random

import pytest

from control_plane.retry_timing import outage_delay_ms, retry_delay_ms

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("attempts", "base", "cap", "expected"),
    [
        (1, 5_000, 300_000, 5_000),
        (2, 5_000, 300_000, 10_000),
        (3, 5_000, 300_000, 20_000),
        (7, 5_000, 300_000, 300_000),  # 320 s capped
        (0, 5_000, 300_000, 5_000),  # never below the base
        (500, 5_000, 300_000, 300_000),  # no overflow on absurd attempts
        (3, 0, 300_000, 0),  # base 0 = retry at once (the round 1 behaviour)
    ],
)
def test_retry_delay_without_jitter(attempts: int, base: int, cap: int, expected: int) -> None:
    assert retry_delay_ms(attempts, base_ms=base, max_ms=cap) == expected


def test_jitter_keeps_at_least_half_and_spreads_documents() -> None:
    rng = random.Random(7)
    delays = [retry_delay_ms(2, base_ms=5_000, max_ms=300_000, rng=rng) for _ in range(200)]
    assert all(5_000 <= d <= 10_000 for d in delays), "equal jitter: between half and the full"
    assert len(set(delays)) > 100, "documents failed together must not come back together"


@pytest.mark.parametrize(
    ("wait", "base", "cap", "expected"),
    [
        (12_000, 5_000, 300_000, 12_000),  # until the next probe
        (100, 5_000, 300_000, 5_000),  # at least the base
        (3_600_000, 5_000, 300_000, 300_000),  # at most the cap
        (-5, 5_000, 300_000, 5_000),
    ],
)
def test_outage_delay(wait: int, base: int, cap: int, expected: int) -> None:
    assert outage_delay_ms(wait, base_ms=base, max_ms=cap) == expected
