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
    backoff.succeeded("feed", now=7.0)
    assert backoff.failed("feed", now=10.0) == 2.0


def test_never_failed_is_settled() -> None:
    assert not JobBackoff().unsettled(16.0, now=0.0)


@pytest.mark.parametrize(
    ("now", "unsettled"),
    [(10.0, True), (39.0, True), (55.9, True), (56.0, False)],
)
def test_unsettled_while_failing_and_one_lease_after_recovery(now: float, unsettled: bool) -> None:
    """Failures at 5 and 10 s, then a long back-off; the database answers again at 40 s."""
    backoff = JobBackoff()
    backoff.failed("reap", now=5.0)
    backoff.failed("reap", now=10.0)
    if now >= 40.0:
        backoff.succeeded("reap", now=40.0)
    assert backoff.unsettled(16.0, now=now) is unsettled


def test_a_new_failure_after_recovery_unsettles_again() -> None:
    backoff = JobBackoff()
    backoff.failed("feed", now=0.0)
    backoff.succeeded("feed", now=5.0)
    assert not backoff.unsettled(1.0, now=7.0)
    backoff.failed("reap", now=8.0)
    assert backoff.unsettled(1.0, now=30.0)
    backoff.succeeded("reap", now=31.0)
    assert backoff.unsettled(1.0, now=31.5)
    assert not backoff.unsettled(1.0, now=32.5)


def test_any_job_reaching_the_database_marks_the_recovery() -> None:
    """The reaper skips its call while unsettled: another job's success must settle it."""
    backoff = JobBackoff()
    backoff.failed("reap", now=0.0)
    backoff.succeeded("feed", now=3.0)
    assert not backoff.unsettled(2.0, now=5.5)
