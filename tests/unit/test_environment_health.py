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
    ("failures", "permanent", "backoff"),
    [
        (1, True, 1.0),
        (2, True, 2.0),
        (3, True, 4.0),
        (6, True, 32.0),
        (7, True, 60.0),
        (30, True, 60.0),
        # unreachable: probed off-thread, so capped low (recovery within seconds)
        (1, False, 1.0),
        (3, False, 4.0),
        (4, False, 5.0),
        (30, False, 5.0),
    ],
)
def test_backoff_doubles_per_consecutive_failure_up_to_the_cap(
    failures: int, permanent: bool, backoff: float
) -> None:
    health = EnvironmentHealth(base_s=1.0, cap_s=60.0, unreachable_cap_s=5.0)
    delays = [
        health.failed("dev", now=100.0, error="x", permanent=permanent) for _ in range(failures)
    ]
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


@pytest.mark.parametrize(
    ("down", "back", "now", "unsettled"),
    [
        (10.0, 11.0, 15.0, True),  # a 1 s blip: settled 1 + 6.5 s after the recovery
        (10.0, 11.0, 18.4, True),
        (10.0, 11.0, 18.6, False),  # long before a whole lease (100 s)
        (10.0, 40.0, 76.0, True),  # a 30 s outage: 30 + 6.5 s
        (10.0, 40.0, 76.6, False),
        (10.0, 200.0, 299.0, True),  # an outage longer than a lease: a whole lease
        (10.0, 200.0, 300.0, False),
    ],
)
def test_after_a_short_outage_reaping_waits_its_length_plus_a_margin(
    down: float, back: float, now: float, unsettled: bool
) -> None:
    """Blips more frequent than a lease must not hold the reaper back for good."""
    health = EnvironmentHealth()
    health.failed("dev", now=down)
    health.failed("dev", now=(down + back) / 2)  # the streak starts at its first failure
    health.reached("dev", now=back)
    assert health.unsettled("dev", 100.0, now=now, after_outage_s=6.5) is unsettled


def test_each_outage_is_measured_from_its_own_first_failure() -> None:
    health = EnvironmentHealth()
    health.failed("dev", now=0.0)
    health.reached("dev", now=50.0)  # a 50 s outage
    health.failed("dev", now=60.0)  # then a blip
    health.reached("dev", now=61.0)
    assert health.unsettled("dev", 100.0, now=66.9, after_outage_s=5.0)
    assert not health.unsettled("dev", 100.0, now=67.1, after_outage_s=5.0)


@pytest.mark.parametrize(("heartbeat_ms", "expected"), [(5000, 20.0), (500, 6.5), (100, 5.3)])
def test_settle_after_outage(heartbeat_ms: int, expected: float) -> None:
    from control_plane.scheduler.service import settle_after_outage_s

    assert settle_after_outage_s(heartbeat_ms) == pytest.approx(expected)
