"""Pure decisions behind heartbeats and drain (issue 10, points 5-7)."""

from __future__ import annotations

import pytest

from control_plane.capacity import HostBudget, pool_budget, room_elsewhere
from control_plane.drain import JobStopped, shutdown_timeout_ms, stop_reason
from control_plane.errors import TransientError
from control_plane.gemini.engine import OcrInterrupted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("abort_reason", "stopping", "calls", "drain_expired", "stops"),
    [
        ("", False, 0, False, None),  # running normally
        ("", False, 3, False, None),
        ("its lease was taken over", False, 2, False, "its lease was taken over"),
        ("its pool slot lapsed and was taken back", False, 0, False, "slot"),
        ("", True, 0, False, "first Gemini call"),  # draining, nothing paid yet: give back
        ("", True, 1, False, None),  # draining, in progress: finish every chunk
        ("", True, 5, True, "OCR_SHUTDOWN_GRACE_MS"),  # grace over: give back
        ("", True, 0, True, "OCR_SHUTDOWN_GRACE_MS"),
        ("its lease was taken over", True, 1, False, "lease"),
    ],
)
def test_stop_reason(
    abort_reason: str, stopping: bool, calls: int, drain_expired: bool, stops: str | None
) -> None:
    reason = stop_reason(
        abort_reason=abort_reason, stopping=stopping, calls=calls, drain_expired=drain_expired
    )
    if stops is None:
        assert reason is None
    else:
        assert reason is not None and stops in reason


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dramatiq", "actors", "-p", "2"], 600_000),
        (["dramatiq", "actors", "--worker-shutdown-timeout", "60000"], 60_000),
        (["dramatiq", "actors", "--worker-shutdown-timeout=840000", "-t", "4"], 840_000),
        (["dramatiq", "actors", "--worker-shutdown-timeout"], 600_000),
    ],
)
def test_shutdown_timeout_from_the_command_line(argv: list[str], expected: int) -> None:
    assert shutdown_timeout_ms(argv) == expected


def test_a_stopped_job_is_an_interruption_the_job_gives_back() -> None:
    # actors.job.outcome_for_error releases every OcrInterrupted (no attempt counted).
    assert issubclass(JobStopped, OcrInterrupted)
    assert issubclass(JobStopped, TransientError)


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        ([], (6.4, 12.8)),
        ([HostBudget("a", 3.2, 6.4)], (3.2, 6.4)),
        ([HostBudget("a", 3.2, 6.4), HostBudget("b", 12.8, 25.6)], (16.0, 32.0)),
    ],
)
def test_pool_budget_is_the_sum_of_live_hosts(
    hosts: list[HostBudget], expected: tuple[float, float]
) -> None:
    assert pool_budget(hosts, (6.4, 12.8)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("usage", "me", "cost", "expected"),
    [
        ({"a": (3.0, 3.0), "b": (3.0, 3.0)}, "a", (1.0, 1.0), False),  # everyone full
        ({"a": (3.0, 3.0), "b": (2.0, 2.0)}, "a", (1.0, 1.0), True),  # b has room
        ({"a": (3.0, 3.0)}, "a", (1.0, 1.0), True),  # b idle (absent = 0)
        ({"a": (0.0, 0.0), "b": (3.0, 3.0)}, "b", (1.5, 0.75), True),
        ({"a": (2.0, 6.0), "b": (3.0, 3.0)}, "b", (1.0, 1.0), False),  # a: CPU ok, RAM full
        ({"a": (2.2, 0.0)}, "b", (1.0, 0.0), True),  # exactly the budget fits
    ],
)
def test_room_on_another_host(
    usage: dict[str, tuple[float, float]], me: str, cost: tuple[float, float], expected: bool
) -> None:
    hosts = [HostBudget("a", 3.2, 6.4), HostBudget("b", 3.2, 6.4)]
    assert room_elsewhere(hosts, usage, me, cost) is expected
    assert room_elsewhere([HostBudget(me, 99, 99)], usage, me, cost) is False  # only me
