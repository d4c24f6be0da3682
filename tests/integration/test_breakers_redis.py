"""The shared breaker in Redis (lua/breaker.lua) makes the same transitions as the pure
`step`, across clients, on Redis time."""

from __future__ import annotations

import time

import pytest
import redis

from control_plane.breakers import Breakers, Policy, State, Verdict, step
from control_plane.keys import Keys

pytestmark = pytest.mark.integration


def test_lua_breaker_matches_the_pure_transitions(redis_client: redis.Redis, keys: Keys) -> None:
    breakers = Breakers(redis_client, keys)
    policy = Policy(threshold=3, probe_ms=60_000)
    ops = [
        "admit",
        "failure",
        "success",
        "failure",
        "failure",
        "admit",
        "failure",
        "admit",
        "failure",
        "success",
        "admit",
        "failure",
    ]
    state = State()
    for i, op in enumerate(ops):
        got = getattr(breakers, op)("gemini:m", policy, *(["boom"] if op == "failure" else []))
        state, want = step(state, op, 0, policy)
        assert (got.verdict, got.transition, got.failures) == (
            want.verdict,
            want.transition,
            want.failures,
        ), f"step {i} ({op})"
        if got.verdict is Verdict.OPEN:
            assert 0 < got.wait_ms <= 60_000


def test_an_open_breaker_lets_one_probe_through_per_interval_for_every_client(
    redis_url: str, keys: Keys
) -> None:
    a = Breakers(redis.Redis.from_url(redis_url, decode_responses=True), keys)
    b = Breakers(redis.Redis.from_url(redis_url, decode_responses=True), keys)
    policy = Policy(threshold=1, probe_ms=300)
    opened = a.failure("document_host:h", policy, "connection refused")
    assert opened.transition == "opened"
    assert a.open_breakers() == {"document_host:h": "connection refused"}
    assert b.admit("document_host:h", policy).verdict is Verdict.OPEN
    time.sleep(0.35)
    verdicts = [c.admit("document_host:h", policy).verdict for c in (a, b, a, b)]
    assert verdicts.count(Verdict.PROBE) == 1 and verdicts.count(Verdict.OPEN) == 3
    closed = b.success("document_host:h", policy)
    assert closed.transition == "closed"
    assert a.success("document_host:h", policy).transition == "", "closed once, said once"
    assert a.open_breakers() == {}
    assert a.admit("document_host:h", policy).verdict is Verdict.CLOSED
