"""Circuit breaker transitions (pure): closed -> open after the threshold, one probe per
interval while open, closed again by a success; the one caller that changes the state is
told so (it writes the single log line)."""

from __future__ import annotations

import pytest

from control_plane.breakers import Policy, State, Verdict, document_host, step

pytestmark = pytest.mark.unit
P = Policy(threshold=3, probe_ms=10_000)

# (state before, op, now, expected state after, verdict, wait_ms, transition)
TABLE = [
    (State(), "admit", 0, State(), Verdict.CLOSED, 0, ""),
    (State(), "failure", 0, State(1), Verdict.CLOSED, 0, ""),
    (State(2), "failure", 5, State(3, True, 10_005), Verdict.OPEN, 10_000, "opened"),
    (State(2), "success", 5, State(), Verdict.CLOSED, 0, ""),
    (State(3, True, 10_005), "admit", 6, State(3, True, 10_005), Verdict.OPEN, 9_999, ""),
    (State(3, True, 10_005), "admit", 10_005, State(3, True, 20_005), Verdict.PROBE, 0, ""),
    (State(3, True, 20_005), "failure", 10_010, State(4, True, 20_005), Verdict.OPEN, 9_995, ""),
    (State(3, True, 20_005), "success", 10_010, State(), Verdict.CLOSED, 0, "closed"),
    (State(9, True, 5), "failure", 50, State(10, True, 5), Verdict.OPEN, 0, ""),
]


@pytest.mark.parametrize(("before", "op", "now", "after", "verdict", "wait", "transition"), TABLE)
def test_breaker_step(before, op, now, after, verdict, wait, transition) -> None:
    state, result = step(before, op, now, P)
    assert state == after
    assert (result.verdict, result.wait_ms, result.transition) == (verdict, wait, transition)


def test_one_failure_opens_a_configuration_breaker() -> None:
    _, result = step(State(), "failure", 0, Policy(threshold=1, probe_ms=60_000))
    assert (result.verdict, result.transition) == (Verdict.OPEN, "opened")


def test_only_one_probe_per_interval() -> None:
    state = State(3, True, 100)
    state, first = step(state, "admit", 100, P)
    state, second = step(state, "admit", 101, P)
    assert (first.verdict, second.verdict) == (Verdict.PROBE, Verdict.OPEN)


@pytest.mark.parametrize(
    ("path", "env", "host"),
    [
        ("https://docs.example.org/a/b.pdf?token=s3cr3t", "dev", "docs.example.org"),
        ("http://user:pw@127.0.0.1:8081/x.pdf", "dev", "127.0.0.1:8081"),
        ("file:///srv/docs/x.pdf", "dev", "file"),
        ("bucket/2024/x.pdf", "prod", "storage:prod"),
    ],
)
def test_document_host(path: str, env: str, host: str) -> None:
    assert document_host(path, env) == host
