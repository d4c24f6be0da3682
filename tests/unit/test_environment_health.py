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


@pytest.mark.parametrize(
    ("failures", "backoff"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)]
)
def test_backoff_doubles_per_consecutive_failure_up_to_the_cap(
    failures: int, backoff: float
) -> None:
    health = EnvironmentHealth(base_s=1.0, cap_s=60.0)
    delays = [health.failed("dev", now=100.0, error="x") for _ in range(failures)]
    assert delays[-1] == backoff
    assert not health.due("dev", now=100.0 + backoff - 0.01)
    assert health.due("dev", now=100.0 + backoff)
    assert health.due("prod", now=0.0), "another environment is not affected"


def test_a_success_resets_the_backoff_and_the_state() -> None:
    health = EnvironmentHealth()
    for _ in range(5):
        health.failed("dev", now=0.0, error="boom", permanent=True)
    health.reached("dev", now=1.0)
    assert health.due("dev", now=1.0) and not health.failing("dev")
    assert health.failed("dev", now=2.0) == 1.0
    assert health.state("dev", now=2.0).state == "unreachable"


@pytest.mark.parametrize(
    ("permanent", "text"),
    [
        (False, "staging UNREACHABLE (connection refused; retry in 2s)"),
        (True, "staging BROKEN (connection refused; retry in 2s)"),
    ],
)
def test_state_says_what_is_wrong(permanent: bool, text: str) -> None:
    health = EnvironmentHealth()
    health.failed("staging", now=10.0, error="connection refused", permanent=permanent)
    health.failed("staging", now=10.0, error="connection refused", permanent=permanent)
    assert health.state("staging", now=10.0).describe() == text
    assert health.state("dev", now=10.0).describe() == "dev ok"


def test_decide_skips_during_backoff_probes_unreachable_retries_broken_inline() -> None:
    health = EnvironmentHealth(base_s=2.0)
    assert health.decide("dev", now=0.0) == "try"
    health.failed("dev", now=0.0, error="timeout")
    health.failed("prod", now=0.0, error="42883", permanent=True)
    assert health.decide("dev", now=1.0) == "skip"
    assert health.decide("prod", now=1.0) == "skip"
    assert health.decide("dev", now=2.0) == "probe"  # off the caller's thread
    assert health.decide("prod", now=2.0) == "try"  # answers fast: inline
    health.probe_answered("dev")
    assert health.decide("dev", now=2.1) == "try"
    assert health.failing("dev"), "still failing until a real call succeeds"
    health.failed("dev", now=3.0, error="timeout")  # the real call failed: longer back-off
    assert health.decide("dev", now=6.9) == "skip" and health.decide("dev", now=7.0) == "probe"
