"""Attack reproductions against the shared Gemini limiter (issue 13 review, round 2).

Each test reproduced one defect with a real Redis and failed on the code as reviewed (its
docstring says what went wrong); it now holds.
"""

from __future__ import annotations

import time

import pytest
import redis

from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter, peak_window_load
from tests.support.limiter import make_limiter as make
from tests.support.limiter import restore, snapshot

pytestmark = pytest.mark.integration

RPM = 20
WINDOW_MS = 2_000


def grant_times(limiter: GeminiRateLimiter, tries: int, tokens: int = 1) -> list[int]:
    decisions = [limiter.try_acquire(tokens) for _ in range(tries)]
    return [d.granted_at_us for d in decisions if d.granted]


def test_a_rollback_refilled_by_other_instances_is_still_detected(
    redis_url: str, keys: Keys
) -> None:
    """Rollback detection used to compare only the grant counter: after a restore, instances
    that saw the older state granted the room the rollback freed, which brought the counter back
    to exactly the value the newer instance saw; that instance then saw nothing wrong and went
    on granting (35+ against 20). Now each instance also checks that its newest grant, while it
    should still be in the window, is in the log: the newer instance's first call after the
    rollback pauses everyone for a window. (Grants the older instance made before that call
    are the documented residual: nothing in the restored state tells them apart from live ones.)
    """
    raw = redis.Redis.from_url(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        newer = make(client, keys)  # saw the newer state
        older = make(client, keys)  # a long-lived worker busy with a long call meanwhile
        assert len(grant_times(older, 5)) == 5
        saved = snapshot(raw, keys)
        assert len(grant_times(newer, RPM - 5)) == RPM - 5
        assert not newer.try_acquire(1).granted, "the window is full"
        restore(raw, keys, saved)  # failover to a lagging replica / restore of an older RDB
        assert len(grant_times(older, RPM)) == RPM - 5, "the refill, before anyone can tell"
        first = newer.try_acquire(1)  # the instance that saw the newer state
        assert not first.granted and first.reason == "cooldown" and first.state_lost
        assert newer.stats().get("state_losses", 0) == 1
        after = grant_times(newer, RPM) + grant_times(older, RPM)
        assert after == [], f"{len(after)} grants after the rollback was detected"
        assert newer.cooldown_remaining_ms() > WINDOW_MS - 500, "a whole window's pause"
        again = newer.try_acquire(1)
        assert not again.state_lost, "the loss is counted once, not at every call"
        assert newer.stats().get("state_losses", 0) == 1
    finally:
        raw.close()
        client.close()


def test_the_counter_lost_alone_is_rebuilt_without_a_pause(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """Only gemini:limiter:seq is lost (evicted under a volatile-* policy: it is the limiter key
    with a TTL that lives longest and is read least); the log and live keys hold every grant.
    Nothing the instance saw is missing, yet it declares the state lost and pauses the whole
    pool for a window."""
    limiter = make(redis_client, keys)
    assert len(grant_times(limiter, 5)) == 5
    redis_client.delete(keys.limiter_seq)  # what an eviction of that one key does
    decision = limiter.try_acquire(1)
    usage = limiter.usage()
    assert usage[0] >= 5, "every grant is still in the log"
    assert decision.granted, (
        f"false 'state lost': {decision.reason}, retry {decision.retry_after_ms} ms with "
        f"{usage[0]} of {RPM} used and the log intact"
    )


def test_an_outside_write_to_the_live_token_sum_is_not_trusted(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The module doc: a live key "lost or altered (eviction, a flushed key, an outside write)
    is rebuilt from the log". Only the request count is compared with the log: a changed
    gemini:tpm:current (a dashboard or operator "resetting" it) is trusted, and admission goes
    past TPM."""
    limiter = make(redis_client, keys, tpm_limit=1_000)
    assert len(grant_times(limiter, 10, tokens=100)) == 10
    assert not limiter.try_acquire(100).granted, "the token window is full"
    redis_client.set(keys.tpm_current, 0, keepttl=True)
    extra = grant_times(limiter, 10, tokens=100)
    assert extra == [], f"{len(extra)} grants of 100 tokens past a full 1000-token window"


def test_a_large_waiter_is_admitted_on_time_when_estimates_were_low(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The token retry hint indexes estimates (gemini:limiter:cum), not settled figures. When
    the settled figures exceed the estimates (an estimator that undercounts), the estimates in
    the log never add up to what must leave, the hint lookup gives up and the fallback is the
    newest grant's expiry: a 40%-of-TPM waiter, which the module doc says "is admitted as soon
    as the tokens ahead of it expire", waits for the whole log to expire, and its reservation
    keeps everyone else out meanwhile (the pool idles)."""
    limiter = make(redis_client, keys, tpm_limit=1_000, max_jitter_ms=0)
    grants = []
    for _ in range(10):
        decision = limiter.try_acquire(10)
        assert decision.granted
        grant = decision.grant
        assert grant is not None
        limiter.settle(grant, 100)  # the estimate was 10, Gemini counted 100
        grants.append(grant)
        time.sleep(0.1)
    assert limiter.usage()[1] == 1_000, "the token window is full (settled figures)"
    big = limiter.acquire(400, timeout=5)
    # 400 tokens fit as soon as the 4th grant (100 settled tokens each) leaves the window.
    fits_at_us = grants[3].granted_at_us + WINDOW_MS * 1000
    late_ms = (big.granted_at_us - fits_at_us) / 1000
    assert late_ms < 150, f"admitted {late_ms:.0f} ms after the tokens ahead of it expired"


def test_a_zero_token_grant_keeps_cum_aligned(redis_client: redis.Redis, keys: Keys) -> None:
    """gemini:limiter:cum is pruned by rank together with the log, assuming the same order. A
    0-token grant has the same cum score as the next grant, so the two are ordered by member
    name (random grant ids: half the time the wrong way round); pruning the 0-token grant from
    the log then removes the *next* grant from cum, and the token hint, reading the stale entry,
    gives up and falls back to the newest grant's expiry. The grant ids are chosen here only to
    make the coin flip land the bad way every run."""
    limiter = make(redis_client, keys, tpm_limit=1_000, max_jitter_ms=0)
    zero = limiter._attempt(0, "ff" * 12, register=False, waited_ms=0)
    assert zero.granted
    time.sleep(0.3)
    first = limiter._attempt(100, "00" * 12, register=False, waited_ms=0)
    assert first.granted
    for _ in range(9):
        time.sleep(0.1)
        assert limiter.try_acquire(100).granted
    assert limiter.usage()[1] == 1_000, "the token window is full"
    # Wait until the 0-token grant has left the window (the 100-token one has not), prune.
    time.sleep(max(0.0, (zero.granted_at_us / 1e6 + WINDOW_MS / 1000 + 0.05) - time.time()))
    assert limiter.usage()[0] == 10
    big = limiter.acquire(100, timeout=5)
    fits_at_us = first.granted_at_us + WINDOW_MS * 1000
    late_ms = (big.granted_at_us - fits_at_us) / 1000
    assert late_ms < 150, f"admitted {late_ms:.0f} ms after the tokens ahead of it expired"


@pytest.mark.parametrize(
    "lost",
    [("limiter_log",), ("limiter_log", "limiter_cum", "rpm_current", "tpm_current")],
    ids=["log-alone", "log-cum-live-keys"],
)
def test_the_log_lost_without_the_counter_is_taken_for_a_loss(
    redis_client: redis.Redis, keys: Keys, lost: tuple[str, ...]
) -> None:
    """Partial key loss: the sliding log (alone, or with cum and the live keys, which share its
    short TTL, so volatile-ttl eviction takes them first) is lost while gemini:limiter:seq
    survives. The counter still equals what every instance saw, so nothing is detected; the
    empty log resets the live keys to 0 and a full window is admitted again on top of the
    grants that were lost."""
    limiter = make(redis_client, keys)
    grants = grant_times(limiter, RPM)
    assert len(grants) == RPM and not limiter.try_acquire(1).granted, "the window is full"
    for name in lost:
        redis_client.delete(getattr(keys, name))
    after = grant_times(limiter, RPM)
    peak, _ = peak_window_load([(at, 1) for at in grants + after], WINDOW_MS * 1000)
    assert peak <= RPM, (
        f"{peak} grants in one window (limit {RPM}) after losing {', '.join(lost)}; "
        f"state_losses={limiter.stats().get('state_losses', 0)}"
    )


def test_a_waiter_larger_than_the_restart_share_does_not_block_the_period(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """A fresh state admits restart_fraction of each limit for one window. A waiter whose
    estimate is within TPM but above the fraction (600 of 1000 at 0.5) cannot be served during
    the period, yet it holds a reservation of its 600 tokens: every newcomer must leave that
    room inside a 500-token limit, so nobody at all is admitted for the whole period."""
    import threading

    limiter = make(redis_client, keys, rpm_limit=100, tpm_limit=1_000, restart_fraction=0.5)
    assert limiter.try_acquire(1).granted, "a fresh state opens its restart period"
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(limiter.acquire(600, timeout=5)))
    waiter.start()
    time.sleep(0.1)
    small = grant_times(limiter, 10, tokens=10)
    waiter.join()
    assert result, "the large waiter is served once the period ends"
    assert len(small) == 10, (
        f"{len(small)} of 10 small requests (100 tokens, well inside the 500-token restart "
        "budget) admitted during the restart period"
    )
