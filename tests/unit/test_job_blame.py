"""What a job does with an outage (issue 11): a Redis error is the dependency's fault; a
released document waits before it is claimed again (pure parts of actors/job.py)."""

from __future__ import annotations

import pytest
import redis

from control_plane.errors import AcquireTimeoutError, DependencyPausedError, TransientError
from control_plane.retry_timing import is_redis_outage, release_delay_ms

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (redis.ConnectionError("Error 111 connecting"), True),
        (redis.TimeoutError("Timeout reading from socket"), True),
        (redis.exceptions.BusyLoadingError("LOADING"), True),  # a ConnectionError
        (redis.ResponseError("WRONGTYPE"), False),  # a bug, not an outage
        (TransientError("Gemini 503"), False),
    ],
)
def test_is_redis_outage(exc: BaseException, outage: bool) -> None:
    assert is_redis_outage(exc) is outage


DELAYS = [
    (DependencyPausedError("x", retry_after_ms=8000), False, 8000),
    (DependencyPausedError("x", retry_after_ms=10), False, 5000),  # at least the base
    (DependencyPausedError("x", retry_after_ms=10**9), True, 300_000),  # at most the max
    (redis.ConnectionError("x"), False, 5000),
    (AcquireTimeoutError("x"), False, 0),  # our own wait: due at once
    (TransientError("x"), True, 0),  # a shutdown: the next worker may take it at once
]


@pytest.mark.parametrize(("exc", "stopping", "delay"), DELAYS)
def test_release_delay(exc: BaseException, stopping: bool, delay: int) -> None:
    assert release_delay_ms(exc, stopping=stopping, base_ms=5000, max_ms=300_000) == delay
