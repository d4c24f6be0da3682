"""Pure parts of the limiter: waits, reply parsing, the sliding-window audit, size checks."""

from __future__ import annotations

import pytest
import redis

from control_plane.errors import RequestTooLargeError
from control_plane.rate_limiter import (
    Decision,
    GeminiRateLimiter,
    pack_acquire,
    pack_call,
    parse_decision,
    peak_window_load,
    wait_seconds,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("retry_after_ms", "jitter", "max_jitter_ms", "expected_s"),
    [
        (0, 0.0, 25, 0.001),  # never a zero sleep: no busy spin
        (1_000, 0.0, 25, 1.0),
        (1_000, 1.0, 25, 1.025),  # jitter capped by max_jitter_ms
        (50, 1.0, 25, 0.055),  # and by a tenth of the hint, keeping short waits precise
        (60_000, 0.5, 25, 60.0125),
    ],
)
def test_wait_seconds(
    retry_after_ms: int, jitter: float, max_jitter_ms: int, expected_s: float
) -> None:
    assert wait_seconds(retry_after_ms, jitter, max_jitter_ms) == pytest.approx(expected_s)


@pytest.mark.parametrize(
    ("events", "window_us", "expected"),
    [
        ([], 1_000, (0, 0)),
        ([(0, 5)], 1_000, (1, 5)),
        ([(0, 5), (999, 7)], 1_000, (2, 12)),
        ([(0, 5), (1_000, 7)], 1_000, (1, 7)),  # (t - window, t]: the first has just left
        ([(2_000, 1), (0, 9), (500, 1), (1_400, 1)], 1_000, (2, 10)),  # unsorted input
        ([(0, 1), (10, 1), (20, 1), (30, 100)], 25, (3, 102)),
    ],
)
def test_peak_window_load(
    events: list[tuple[int, int]], window_us: int, expected: tuple[int, int]
) -> None:
    assert peak_window_load(events, window_us) == expected


def test_parse_decision_granted_and_denied() -> None:
    granted = parse_decision("1 0 ok 1700000000123456 3 900", "g1", 300)
    assert granted == Decision(True, 0, "g1", "ok", 300, 1_700_000_000_123_456, 3, 900)
    assert granted.grant is not None
    assert (granted.grant.grant_id, granted.grant.tokens, granted.grant.granted_at_ms) == (
        "g1",
        300,
        1_700_000_000_123,
    )
    with_seq = parse_decision("1 0 ok 1700000000123456 3 900 41 1700000000123", "g1", 300)
    assert (with_seq.seq, with_seq.server_ms) == (41, 1_700_000_000_123)
    denied = parse_decision(b"0 250 tpm 0 5 1000", "g2", 300)
    assert (denied.granted, denied.grant_id, denied.reason, denied.retry_after_ms) == (
        False,
        None,
        "tpm",
        250,
    )
    assert denied.grant is None


def test_limits_are_validated_without_touching_redis() -> None:
    client = redis.Redis(host="127.0.0.1", port=1)  # never connected: these checks are local
    with pytest.raises(ValueError):
        GeminiRateLimiter(client, rpm_limit=0, tpm_limit=10)
    with pytest.raises(ValueError):
        GeminiRateLimiter(client, rpm_limit=1, tpm_limit=10, restart_fraction=0)
    limiter = GeminiRateLimiter(client, rpm_limit=1, tpm_limit=10)
    with pytest.raises(RequestTooLargeError, match="more than the whole per-window budget"):
        limiter.try_acquire(11)
    with pytest.raises(ValueError):
        limiter.try_acquire(-1)


@pytest.mark.parametrize(
    ("member", "flag", "waited", "seq", "seen_ms"),
    [
        ("ab12:300", "1", "0", "0", "0"),
        ("x:0", "0", "123456", "98765432101", "1700000000123"),
        ("é-id:7", "1", "5", "3", "1"),
    ],
)
def test_pre_packed_call_is_what_redis_py_would_send(
    member: str, flag: str, waited: str, seq: str, seen_ms: str
) -> None:
    keys = ["gemini:limiter:log", "k2", "k3"]
    config = ["10", "1000", "60000", "0.5"]
    head, tail = pack_acquire("f" * 40, keys, config)
    mine = "ab12 1700000000123456"
    ours = pack_call(head, tail, member, flag, waited, seq, seen_ms, mine, "0")
    args = (
        "EVALSHA", "f" * 40, len(keys), *keys, member, flag, waited, seq, seen_ms, mine, "0",
        *config,
    )  # fmt: skip
    expected = b"".join(redis.Connection().pack_command(*args))
    assert ours == expected
    with pytest.raises(ValueError):
        pack_call(head, tail, member, flag, waited)
