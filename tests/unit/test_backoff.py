"""Scheduler job back-off after database errors: a table of failures and clocks."""

from __future__ import annotations

import pytest

from control_plane.scheduler.backoff import JobBackoff

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("failures", "expected_delay"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (40, 30.0)],
)
def test_pause_doubles_up_to_the_cap(failures: int, expected_delay: float) -> None:
    backoff = JobBackoff(base_s=2.0, cap_s=30.0)
    delays = [backoff.failed("feed", now=100.0) for _ in range(failures)]
    assert delays[-1] == expected_delay


def test_paused_until_the_delay_has_passed_and_per_job() -> None:
    backoff = JobBackoff()
    backoff.failed("feed", now=10.0)
    assert backoff.paused("feed", now=11.9)
    assert not backoff.paused("feed", now=12.0)
    assert not backoff.paused("reap", now=11.0)


def test_success_resets_the_doubling() -> None:
    backoff = JobBackoff()
    backoff.failed("feed", now=0.0)
    backoff.failed("feed", now=2.0)
    backoff.succeeded("feed")
    assert backoff.failed("feed", now=10.0) == 2.0
