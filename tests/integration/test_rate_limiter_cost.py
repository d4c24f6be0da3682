"""A denial costs the same in Redis whatever the log size and the number of waiters (issue 13).

Measured on a private redis-server (nothing else runs there): INFO commandstats counts the Redis
commands each EVALSHA ran inside the script (deterministic), SLOWLOG (threshold 0) gives each
EVALSHA's execution time inside Redis. The token hint is the worst case: the window is full of
1-token grants and the request needs a quarter of them to expire (the old script walked them all).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pytest
import redis

from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.redis_conn import redis_client
from tests.support.redis_server import private_redis

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CALLS = 150
IGNORED = {"cmdstat_evalsha", "cmdstat_eval", "cmdstat_script", "cmdstat_config"}


@dataclass(frozen=True)
class Cost:
    commands_per_call: float  # Redis commands run inside one EVALSHA
    median_us: float  # one EVALSHA's execution time inside Redis (SLOWLOG)


def _measure(admin: redis.Redis, call: object) -> Cost:
    admin.config_set("slowlog-log-slower-than", 0)
    admin.config_set("slowlog-max-len", 100 * CALLS)
    admin.slowlog_reset()
    admin.config_resetstat()
    for _ in range(CALLS):
        call()  # type: ignore[operator]
    stats = admin.info("commandstats")
    entries = admin.slowlog_get(100 * CALLS)
    admin.config_set("slowlog-log-slower-than", 10_000)
    evals = stats["cmdstat_evalsha"]["calls"]
    inner = sum(v["calls"] for k, v in stats.items() if k not in IGNORED)
    durations = [
        e["duration"]
        for e in entries
        if str(e["command"]).lower().startswith(("evalsha", "b'evalsha"))
    ]
    assert evals == CALLS and len(durations) >= CALLS * 0.9
    return Cost(inner / evals, statistics.median(durations))


def _setup(client: redis.Redis, log_size: int, waiters: int) -> GeminiRateLimiter:
    keys = Keys(prefix=f"cost:{log_size}:{waiters}:")
    limiter = GeminiRateLimiter(
        client,
        rpm_limit=10 * log_size + 10 * waiters,
        tpm_limit=log_size,
        window_ms=600_000,
        keys=keys,
        restart_fraction=1.0,
        reserve_grace_ms=600_000,
    )
    pipe_size = 500
    for start in range(0, log_size, pipe_size):  # fill the window with 1-token grants
        for _ in range(min(pipe_size, log_size - start)):
            assert limiter.try_acquire(1).granted
    for i in range(waiters):  # waiters queued behind the full window
        assert not limiter._attempt(1, f"w{i:05d}", register=True, waited_ms=0).granted
    assert client.zcard(keys.limiter_log) == log_size
    assert client.zcard(keys.limiter_waiting) == waiters
    return limiter


def test_denial_cost_is_flat_in_log_size_and_waiters() -> None:
    shapes = [(100, 100), (10_000, 200), (10_000, 1_000)]
    newcomer: dict[tuple[int, int], Cost] = {}
    queued: dict[tuple[int, int], Cost] = {}
    with private_redis() as server:
        client = redis_client(server.url)
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            for log_size, waiters in shapes:
                limiter = _setup(client, log_size, waiters)
                half = log_size // 4  # feasible: the window plus 64 reserved tokens

                def deny_newcomer(lim: GeminiRateLimiter = limiter, need: int = half) -> None:
                    decision = lim.try_acquire(need)
                    assert not decision.granted and decision.retry_after_ms > 0

                def deny_waiter(lim: GeminiRateLimiter = limiter, w: int = waiters) -> None:
                    # a waiter far back in the queue asks again and keeps its place
                    decision = lim._attempt(1, f"w{w - 1:05d}", register=True, waited_ms=1)
                    assert not decision.granted

                newcomer[(log_size, waiters)] = _measure(admin, deny_newcomer)
                queued[(log_size, waiters)] = _measure(admin, deny_waiter)
        finally:
            client.close()
            admin.close()
    for name, costs in (("newcomer", newcomer), ("queued waiter", queued)):
        print(f"\n{name} denial (log size, waiters): commands per call, median µs in Redis")
        for shape, cost in costs.items():
            print(f"  {shape}: {cost.commands_per_call:.1f}, {cost.median_us:.0f}")
        counts = {round(cost.commands_per_call) for cost in costs.values()}
        assert len(counts) == 1, f"{name}: commands per denial grow with the shape: {costs}"
        times = [cost.median_us for cost in costs.values()]
        # Flat, not a timing target: the old script grew ~100x over these shapes.
        assert max(times) <= 4 * max(min(times), 20), f"{name}: denial time grows: {costs}"


def test_grant_cost_is_flat_in_log_size() -> None:
    costs: dict[int, Cost] = {}
    with private_redis() as server:
        client = redis_client(server.url)
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            for log_size in (100, 10_000):
                keys = Keys(prefix=f"grant:{log_size}:")
                limiter = GeminiRateLimiter(
                    client, rpm_limit=10**6, tpm_limit=10**9, window_ms=600_000, keys=keys
                )
                for _ in range(log_size):
                    assert limiter.try_acquire(1).granted

                def grant(lim: GeminiRateLimiter = limiter) -> None:
                    assert lim.try_acquire(1).granted

                costs[log_size] = _measure(admin, grant)
        finally:
            client.close()
            admin.close()
    print(f"\ngrant: commands per call, median µs in Redis: {costs}")
    # 14: TIME, MGET, prune check, ZCARD, newest-grant check, queue, 2 ZADD, state + counter,
    # 2 mirrors, TTL check, counter
    assert round(costs[100].commands_per_call) == round(costs[10_000].commands_per_call) <= 14
    assert costs[10_000].median_us <= 4 * max(costs[100].median_us, 20)
