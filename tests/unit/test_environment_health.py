"""Environment health: when reaping is safe again after an outage (a table of clocks)."""

from __future__ import annotations

import pytest

from control_plane.queue.health import EnvironmentHealth

pytestmark = pytest.mark.unit


def test_never_failed_is_settled() -> None:
    assert not EnvironmentHealth().unsettled("dev", 16.0, now=0.0)


@pytest.mark.parametrize(
    ("now", "unsettled"),
    [(10.0, True), (39.0, True), (55.9, True), (56.0, False)],
)
def test_unsettled_while_failing_and_one_lease_after_recovery(now: float, unsettled: bool) -> None:
    """Failures at 5 and 10 s, then a long back-off; the database answers again at 40 s."""
    health = EnvironmentHealth()
    health.failed("dev", now=5.0)
    health.failed("dev", now=10.0)
    if now >= 40.0:
        health.reached("dev", now=40.0)
    assert health.unsettled("dev", 16.0, now=now) is unsettled


def test_only_the_first_success_after_a_failure_marks_the_recovery() -> None:
    health = EnvironmentHealth()
    health.failed("dev", now=0.0)
    health.reached("dev", now=5.0)
    health.reached("dev", now=9.0)
    assert not health.unsettled("dev", 4.5, now=9.6)


def test_a_new_failure_after_recovery_unsettles_again() -> None:
    health = EnvironmentHealth()
    health.failed("dev", now=0.0)
    health.reached("dev", now=5.0)
    assert not health.unsettled("dev", 1.0, now=7.0)
    health.failed("dev", now=8.0)
    assert health.unsettled("dev", 1.0, now=30.0)
    health.reached("dev", now=31.0)
    assert health.unsettled("dev", 1.0, now=31.5)
    assert not health.unsettled("dev", 1.0, now=32.5)


def test_environments_are_independent() -> None:
    health = EnvironmentHealth()
    health.failed("staging", now=0.0)
    assert health.unsettled("staging", 10.0, now=1.0)
    assert not health.unsettled("dev", 10.0, now=1.0)
