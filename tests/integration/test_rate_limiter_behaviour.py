"""GeminiRateLimiter against the real Redis: settle, cooldown, limits, timeouts, TTLs, restarts."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from control_plane.errors import AcquireTimeoutError, RequestTooLargeError
from control_plane.keys import Keys
from control_plane.rate_limiter import AcquireCancelledError, GeminiRateLimiter, parse_decision

pytestmark = pytest.mark.integration


def make(client: redis.Redis, keys: Keys, **overrides: object) -> GeminiRateLimiter:
    options: dict[str, object] = {
        "rpm_limit": 5,
        "tpm_limit": 1_000,
        "window_ms": 1_000,
        "keys": keys,
        "restart_fraction": 1.0,
    }
    options.update(overrides)
    return GeminiRateLimiter(client, **options)  # type: ignore[arg-type]


def test_both_windows_are_enforced_and_denials_say_when_to_retry(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys)
    assert limiter.try_acquire(900).granted
    denied = limiter.try_acquire(200)
    assert (denied.granted, denied.reason) == (False, "tpm")
    assert 900 <= denied.retry_after_ms <= 1_000, (
        "the 900-token grant frees its room after ~1 window"
    )
    for _ in range(4):
        assert limiter.try_acquire(10).granted
    assert limiter.try_acquire(1).reason == "rpm"
    assert limiter.usage() == (5, 940)
    assert redis_client.get(keys.rpm_current) == "5"
    assert redis_client.get(keys.tpm_current) == "940"


def test_settle_trues_up_once_and_is_idempotent(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys)
    grant = limiter.acquire(600)
    limiter.settle(grant, 150)
    limiter.settle(grant, 150)
    assert limiter.usage() == (1, 150)
    assert limiter.try_acquire(800).granted, "the settled-down tokens are free again"


def test_settle_after_the_window_changes_nothing(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys, window_ms=300)
    grant = limiter.acquire(100)
    time.sleep(0.35)
    limiter.acquire(50)
    limiter.settle(grant, 900)
    assert limiter.usage() == (1, 50)
    assert redis_client.zcard(keys.limiter_log) == 1, "the expired grant was pruned, not revived"


def test_cooldown_is_shared_by_every_instance_and_never_shortened(redis_client, keys: Keys) -> None:
    first, second = make(redis_client, keys), make(redis_client, keys)
    first.cooldown(2.0, reason="429 quota")
    second.cooldown(0.1, reason="shorter")
    denied = second.try_acquire(1)
    assert (denied.granted, denied.reason) == (False, "cooldown")
    assert 1_500 < denied.retry_after_ms <= 2_000
    assert 1_500 < first.cooldown_remaining_ms() <= 2_000
    assert redis_client.get(keys.cooldown_reason) == "429 quota"
    assert first.stats()["cooldowns"] == 1


def test_acquire_waits_out_a_cooldown(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys)
    limiter.cooldown(0.3)
    started = time.monotonic()
    limiter.acquire(1, timeout=5)
    assert time.monotonic() - started >= 0.25, "granted before the cooldown ended"
    assert limiter.cooldown_remaining_ms() == 0


def test_request_larger_than_tpm_is_refused_at_once(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys)
    with pytest.raises(RequestTooLargeError, match="GEMINI_TPM_LIMIT=1000"):
        limiter.acquire(1_001, timeout=60)
    with pytest.raises(RequestTooLargeError):
        limiter.try_acquire(1_001)
    assert limiter.try_acquire(1_000).granted, "exactly the budget is allowed"


def test_acquire_times_out_and_withdraws_its_reservation(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys, window_ms=10_000)
    limiter.acquire(1_000)
    started = time.monotonic()
    with pytest.raises(AcquireTimeoutError, match=r"within 0\.3s"):
        limiter.acquire(10, timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2, f"timeout honoured roughly, took {elapsed:.2f}s"
    assert redis_client.zcard(keys.limiter_waiting) == 0, "a reservation outlived its waiter"
    assert limiter.stats()["timeouts"] == 1


def test_stop_event_ends_a_wait(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys, window_ms=10_000)
    limiter.acquire(1_000)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(AcquireCancelledError):
        limiter.acquire(10, timeout=30, stop_event=stop)
    assert redis_client.zcard(keys.limiter_waiting) == 0


def test_queued_waiter_holds_headroom_against_newcomers(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys, rpm_limit=100, window_ms=800)
    limiter.acquire(700)
    waiter = threading.Thread(target=limiter.acquire, args=(600,), kwargs={"timeout": 5})
    waiter.start()
    deadline = time.monotonic() + 2
    while redis_client.zcard(keys.limiter_waiting) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    newcomer = limiter.try_acquire(100)
    assert (newcomer.granted, newcomer.reason) == (False, "reserved"), (
        "300 tokens are free but 600 are reserved by the queued waiter"
    )
    waiter.join()
    assert limiter.usage() == (1, 600), "the waiter got its 600 once the 700 expired"


def test_a_retried_script_call_does_not_charge_twice(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys)
    first = limiter._attempt(300, "fixed-grant-id", register=True, waited_ms=0)
    # What redis-py's retry (or the fallback after a lost fast reply) sends: the same call, with
    # the lookup flag the ordinary path always sets.
    args = ["fixed-grant-id:300", "1", "0", "0", "0", "- 0", "1", *limiter._acquire_config]
    raw = limiter._acquire_script(keys=limiter._acquire_keys, args=args)
    again = parse_decision(raw, "fixed-grant-id", 300)
    assert first.granted and again.granted
    assert again.granted_at_us == first.granted_at_us
    assert limiter.usage() == (1, 300)


def test_lost_state_restarts_at_the_restart_fraction_for_one_window(
    redis_client, keys: Keys
) -> None:
    limiter = make(redis_client, keys, rpm_limit=10, window_ms=500, restart_fraction=0.5)
    granted = sum(limiter.try_acquire(1).granted for _ in range(10))
    assert granted == 5, "a limiter without an epoch admits only half of RPM in its first window"
    time.sleep(0.55)
    assert sum(limiter.try_acquire(1).granted for _ in range(10)) == 10


def test_every_key_expires(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys, window_ms=10_000)
    limiter.cooldown(1.0, "x")
    limiter.acquire(1_000)

    def wait_briefly() -> None:
        with pytest.raises(AcquireTimeoutError):
            limiter.acquire(10, timeout=0.5)

    blocked = threading.Thread(target=wait_briefly)
    blocked.start()
    time.sleep(0.2)
    names = sorted(redis_client.scan_iter(match=f"{keys.prefix}*"))
    assert keys.limiter_waiting in names and keys.limiter_log in names
    missing_ttl = [name for name in names if redis_client.pttl(name) < 0]
    assert not missing_ttl, f"keys without a TTL: {missing_ttl}"
    blocked.join()
