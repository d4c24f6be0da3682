"""The contract keys as the live count/sum, settle on the member, and the pre-packed call path."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.redis_conn import redis_client as make_client
from tests.support.redis_server import private_redis

pytestmark = pytest.mark.integration


def make(client: redis.Redis, keys: Keys, **overrides: object) -> GeminiRateLimiter:
    options: dict[str, object] = {
        "rpm_limit": 10,
        "tpm_limit": 1_000,
        "window_ms": 1_000,
        "keys": keys,
        "restart_fraction": 1.0,
    }
    options.update(overrides)
    return GeminiRateLimiter(client, **options)  # type: ignore[arg-type]


def published(client: redis.Redis, keys: Keys) -> tuple[int, int]:
    """What a `redis-cli GET` of the two contract keys shows (missing reads as 0)."""
    return int(client.get(keys.rpm_current) or 0), int(client.get(keys.tpm_current) or 0)


def test_contract_keys_follow_grants_and_expiry_without_a_status_call(
    redis_client, keys: Keys
) -> None:
    limiter = make(redis_client, keys, window_ms=400)
    limiter.try_acquire(300)
    limiter.try_acquire(200)
    assert published(redis_client, keys) == (2, 500)
    time.sleep(0.25)
    limiter.try_acquire(100)
    assert published(redis_client, keys) == (3, 600)
    time.sleep(0.2)  # the first two have left the window; the next call prunes them
    denied = limiter.try_acquire(1_000)
    assert not denied.granted
    assert published(redis_client, keys) == (1, 100), "a denial that prunes updates the keys"
    time.sleep(0.45)
    assert limiter.usage() == (0, 0)
    assert published(redis_client, keys) == (0, 0)


@pytest.mark.parametrize(
    "damage",
    [
        "delete tpm",
        "delete rpm",
        "wrong rpm",
        "delete both",
    ],
)
def test_lost_or_altered_contract_keys_are_rebuilt_from_the_log(
    redis_client, keys: Keys, damage: str
) -> None:
    limiter = make(redis_client, keys, window_ms=10_000)
    for tokens in (100, 250, 40):
        limiter.try_acquire(tokens)
    if damage in ("delete tpm", "delete both"):
        redis_client.delete(keys.tpm_current)
    if damage in ("delete rpm", "delete both"):
        redis_client.delete(keys.rpm_current)
    if damage == "wrong rpm":
        redis_client.set(keys.rpm_current, 7)
    assert limiter.try_acquire(600).granted, "the sum was rebuilt: 390 + 600 fits in 1000"
    assert published(redis_client, keys) == (4, 990)
    assert not limiter.try_acquire(20).granted, "and it is exact: 990 + 20 does not fit"
    assert redis_client.pttl(keys.rpm_current) > 0 and redis_client.pttl(keys.tpm_current) > 0


def test_settle_updates_the_live_sum_and_a_second_settle_with_a_new_figure_applies(
    redis_client, keys: Keys
) -> None:
    limiter = make(redis_client, keys, window_ms=10_000)
    grant = limiter.acquire(600)
    limiter.try_acquire(100)
    limiter.settle(grant, 150)
    assert published(redis_client, keys) == (2, 250)
    limiter.settle(grant, 150)
    assert published(redis_client, keys) == (2, 250), "settling again changes nothing"
    limiter.settle(grant, 200)
    assert published(redis_client, keys) == (2, 300), "a corrected figure still applies"
    assert limiter.usage() == (2, 300)
    assert redis_client.zscore(keys.limiter_log, f"{grant.grant_id}:200") is not None


def test_settle_while_the_live_sum_is_missing_leaves_it_to_the_rebuild(
    redis_client, keys: Keys
) -> None:
    limiter = make(redis_client, keys, window_ms=10_000)
    grant = limiter.acquire(600)
    redis_client.delete(keys.tpm_current)
    limiter.settle(grant, 100)
    assert redis_client.get(keys.tpm_current) is None, "no sum started at the delta"
    assert limiter.usage() == (1, 100)
    assert published(redis_client, keys) == (1, 100)


def test_ttls_are_renewed_while_grants_continue(redis_client, keys: Keys) -> None:
    limiter = make(redis_client, keys, window_ms=200, rpm_limit=1_000)
    deadline = time.monotonic() + 3.0  # longer than window + margin (5 s margin / 2 = 2.5 s)
    while time.monotonic() < deadline:
        assert limiter.try_acquire(1).granted
        time.sleep(0.05)
    for name in (keys.limiter_log, keys.rpm_current, keys.tpm_current):
        assert redis_client.pttl(name) > 200, f"{name} could expire before its last grant leaves"


def test_a_killed_idle_connection_is_harmless(redis_url: str, keys: Keys) -> None:
    client = make_client(redis_url)
    admin = make_client(redis_url)
    try:
        limiter = make(client, keys)
        assert limiter.try_acquire(10).granted
        own = limiter._local.conn  # the connection the fast path keeps for this thread
        own.send_command("CLIENT", "ID")
        admin.client_kill_filter(_id=own.read_response())  # only ours: the server is shared
        decision = limiter.try_acquire(10)
        assert decision.granted
        assert limiter.usage() == (2, 20), "charged once despite the failed first attempt"
    finally:
        client.close()
        admin.close()


def test_script_cache_flush_is_invisible(redis_url: str, keys: Keys) -> None:
    client = make_client(redis_url)
    try:
        limiter = make(client, keys)
        assert limiter.try_acquire(10).granted
        client.script_flush()
        assert limiter.try_acquire(10).granted
        assert limiter.usage() == (2, 20)
    finally:
        client.close()


def test_a_single_connection_client_uses_the_ordinary_path(redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        limiter = make(client, keys)
        assert limiter.try_acquire(10).granted
        assert limiter.try_acquire(995).reason == "tpm"
    finally:
        client.close()


@pytest.mark.faults
def test_a_reply_timeout_falls_back_to_the_retrying_path_and_charges_once() -> None:
    keys = Keys(prefix="live:")
    with private_redis() as server:
        client = redis.Redis.from_url(
            server.url,
            decode_responses=True,
            socket_timeout=0.15,
            retry=Retry(ConstantBackoff(0.1), 20),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        admin = redis.Redis.from_url(server.url)
        try:
            limiter = make(client, keys)
            assert limiter.try_acquire(10).granted
            admin.execute_command("CLIENT", "PAUSE", 500, "ALL")
            started = time.monotonic()
            decision = limiter.try_acquire(10)  # the pre-packed attempt times out mid-call
            assert time.monotonic() - started >= 0.4, "the pause was not in the way"
            assert decision.granted
            assert limiter.usage() == (2, 20), "one charge despite the timed-out attempt"
        finally:
            client.close()
            admin.close()


def test_token_retry_hint_is_exact_and_survives_the_loss_of_its_index(
    redis_client, keys: Keys
) -> None:
    limiter = make(redis_client, keys, rpm_limit=100, window_ms=2_000)
    stamps = []
    for _ in range(3):
        stamps.append(limiter.acquire(300).granted_at_us)
        time.sleep(0.3)

    def hints(lim: GeminiRateLimiter) -> list[tuple[int, int]]:
        out = []
        for tokens, frees_after in ((400, 0), (500, 1), (700, 1), (1_000, 2)):
            denied = lim.try_acquire(tokens)
            assert not denied.granted and denied.reason == "tpm"
            seconds, micros = redis_client.time()
            expected_ms = (stamps[frees_after] + 2_000_000 - (seconds * 1_000_000 + micros)) / 1000
            out.append((denied.retry_after_ms, round(expected_ms)))
        return out

    def check(found: list[tuple[int, int]]) -> None:
        for hint, expected in found:  # the grant whose expiry makes room, to a few ms
            assert abs(hint - expected) <= 30, found

    check(hints(limiter))
    redis_client.delete(keys.limiter_cum)  # the index lost: rebuilt from the log
    check(hints(limiter))
    redis_client.delete(keys.limiter_seq)  # the running total lost too, seen by a fresh process
    check(hints(make(redis_client, keys, rpm_limit=100, window_ms=2_000)))
