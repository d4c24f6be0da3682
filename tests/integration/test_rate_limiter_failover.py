"""The limiter when the shared state goes back in time or away, and after idle gaps (issue 13).

Rollback is made the way an operator's restore or a lagging replica makes it: DUMP of every key
of the limiter at one moment, more grants, then RESTORE of every key to that snapshot.
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


def grant_times(limiter: GeminiRateLimiter, tries: int) -> list[int]:
    return [d.granted_at_us for d in (limiter.try_acquire(1) for _ in range(tries)) if d.granted]


def test_rollback_to_an_older_snapshot_admits_nobody_for_a_window(
    redis_url: str, keys: Keys
) -> None:
    raw = redis.Redis.from_url(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        limiter = make(client, keys)
        stale = make(client, keys)  # a long-lived instance that saw only the older state
        grants = grant_times(limiter, 5) + grant_times(stale, 1)
        assert len(grants) == 6
        saved = snapshot(raw, keys)
        grants += grant_times(limiter, 14)
        assert len(grants) == RPM and not limiter.try_acquire(1).granted, "the window is full"
        restore(raw, keys, saved)
        restored_at = time.time()
        # The review's reproduction: the same instance asks for 15 more in the full window.
        after = grant_times(limiter, 15)
        assert after == [], f"{len(after)} grants inside a window the instance saw full"
        denied = limiter.try_acquire(1)
        assert denied.reason == "cooldown" and denied.retry_after_ms > WINDOW_MS * 0.8
        # The shared pause stops the instance that never saw the newer state as well.
        assert grant_times(stale, 5) == []
        assert limiter.stats()["state_losses"] == 1
        # After one window everyone is admitted again, and no window ever held more than RPM.
        time.sleep(max(0.0, restored_at + WINDOW_MS / 1000 + 0.1 - time.time()))
        later = grant_times(limiter, RPM)
        assert later, "admission resumed after the pause"
        events = [(at, 1) for at in grants + after + later]
        peak, _ = peak_window_load(events, WINDOW_MS * 1000)
        assert peak <= RPM, f"{peak} grants in one window (limit {RPM})"
    finally:
        raw.close()
        client.close()


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_restart_fraction_applies_to_fresh_state_and_a_seen_loss_always_pauses(
    redis_client: redis.Redis, keys: Keys, fraction: float
) -> None:
    fresh = make(redis_client, keys, restart_fraction=fraction)
    first = grant_times(fresh, RPM)
    assert len(first) == int(RPM * fraction), "a fresh state admits the fraction for one window"
    # The state is lost under a limiter that saw it (a flush of these keys).
    for name in list(redis_client.scan_iter(match=f"{keys.prefix}*")):
        redis_client.delete(name)
    denied = fresh.try_acquire(1)
    assert denied.reason == "cooldown", f"fraction {fraction}: a seen loss must pause everyone"
    assert WINDOW_MS * 0.8 < denied.retry_after_ms <= WINDOW_MS
    # A new instance (no memory) is stopped by the same shared pause.
    assert grant_times(make(redis_client, keys, restart_fraction=fraction), 3) == []


def test_an_idle_gap_across_the_state_lifetime_causes_no_pause(
    redis_client: redis.Redis, keys: Keys
) -> None:
    life_ms = 3_000
    limiter = make(redis_client, keys, window_ms=300, state_life_ms=life_ms)
    started = time.monotonic()
    # Busy for longer than the lifetime: the old epoch expired this long after the busy
    # period began, so the first call after a short idle gap paused everyone for a window.
    while time.monotonic() - started < life_ms / 1000 + 1.0:
        assert limiter.try_acquire(1).granted
        time.sleep(0.02)
    assert redis_client.pttl(keys.limiter_seq) > life_ms / 2, "the counter follows the log"
    time.sleep(0.5)  # idle past the window: the log, cum and live keys are gone or empty
    after_gap = limiter.try_acquire(1)
    assert after_gap.granted, f"false 'state lost' after an idle gap: {after_gap.reason}"
    assert limiter.stats().get("state_losses", 0) == 0
    # Fully idle for longer than the lifetime: every key is gone and the instance acts as fresh
    # (restart_fraction, 1 here), not as one that lost its state.
    time.sleep(life_ms / 1000 + 0.5)
    assert redis_client.exists(keys.limiter_seq) == 0
    assert limiter.try_acquire(1).granted
    assert limiter.stats().get("state_losses", 0) == 0
