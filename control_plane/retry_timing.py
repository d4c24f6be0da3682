"""When a document sent back to ready may be claimed again (issue 11): pure functions.

A document that failed for a transient reason goes back to ready with a not-before time
(`retry_not_before`, see control_plane/sql/011_retry_not_before.sql), so the claim takes
the other ready documents first instead of burning the same document's attempts within
seconds. The delay grows exponentially with the attempts already used, bounded by
OCR_RETRY_BASE_MS and OCR_RETRY_MAX_MS, with "equal jitter" (at least half the delay,
so documents failed together spread out but none comes back at once).
"""

from __future__ import annotations

import random

import redis

from control_plane.errors import DependencyPausedError


def retry_delay_ms(
    attempts: int, *, base_ms: int, max_ms: int, rng: random.Random | None = None
) -> int:
    """Not-before delay after failed attempt number `attempts` (1-based); jitter with an rng."""
    if base_ms <= 0 or max_ms <= 0:
        return 0
    exponent = min(max(attempts, 1) - 1, 30)  # 2**30 x base is past any sane cap
    delay = min(max_ms, base_ms * 2**exponent)
    if rng is not None:
        delay = delay / 2 + rng.uniform(0, delay / 2)
    return int(delay)


def outage_delay_ms(wait_ms: int, *, base_ms: int, max_ms: int) -> int:
    """Not-before delay of a document given back during an outage: until the next probe.

    At least OCR_RETRY_BASE_MS (the claim would only hand it back again), at most
    OCR_RETRY_MAX_MS (a long outage still gets its documents tried now and then).
    """
    return int(min(max(wait_ms, base_ms, 0), max(max_ms, 0)))


def is_redis_outage(exc: BaseException) -> bool:
    """A Redis error a job meets (limiter, slots, breakers): the dependency's fault, so the
    document is given back without an attempt, never failed."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def release_delay_ms(exc: BaseException, *, stopping: bool, base_ms: int, max_ms: int) -> int:
    """How long a released document waits before it may be claimed again."""
    if isinstance(exc, DependencyPausedError):
        return outage_delay_ms(exc.retry_after_ms, base_ms=base_ms, max_ms=max_ms)
    if stopping:
        return 0  # a shutdown: the next worker may take it at once
    if is_redis_outage(exc):
        return outage_delay_ms(base_ms, base_ms=base_ms, max_ms=max_ms)
    return 0
