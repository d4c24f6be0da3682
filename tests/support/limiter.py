"""Helpers for the limiter's tests: a limiter on a test's keys, a snapshot/restore of every key
(what an RDB restore or a lagging replica does), and the previous version's scripts (a worker
not yet upgraded, for rolling-upgrade tests; tests/data/limiter_previous/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import redis

from control_plane.keys import LIMITER_EPOCH_TTL_MS, STATS_TTL_MS, WINDOW_TTL_MARGIN_MS, Keys
from control_plane.rate_limiter import GeminiRateLimiter

PREVIOUS = Path(__file__).resolve().parents[1] / "data" / "limiter_previous"


def make_limiter(client: redis.Redis, keys: Keys, **overrides: Any) -> GeminiRateLimiter:
    """RPM 20, a 2 s window, no restart period, unless overridden."""
    options: dict[str, Any] = {
        "rpm_limit": 20,
        "tpm_limit": 1_000_000,
        "window_ms": 2_000,
        "keys": keys,
        "restart_fraction": 1.0,
        **overrides,
    }
    return GeminiRateLimiter(client, **options)


def snapshot(client: redis.Redis, keys: Keys) -> dict[str, tuple[bytes, int]]:
    """DUMP + PTTL of every key under the prefix (what an RDB snapshot holds)."""
    names = list(client.scan_iter(match=f"{keys.prefix}*"))
    return {name: (client.dump(name), client.pttl(name)) for name in names}  # type: ignore[misc]


def restore(client: redis.Redis, keys: Keys, saved: dict[str, tuple[bytes, int]]) -> None:
    """Every key back to the snapshot; keys made since are gone (a restart from that RDB)."""
    for name in list(client.scan_iter(match=f"{keys.prefix}*")):
        client.delete(name)
    for name, (data, pttl) in saved.items():
        client.restore(name, max(pttl, 0), data)


def previous_source(name: str) -> str:
    """The previous version's script `name` (helpers expanded)."""
    return (PREVIOUS / f"{name}.lua").read_text(encoding="utf-8")


def previous_acquire(
    client: redis.Redis,
    keys: Keys,
    tokens: int,
    *,
    seen: tuple[int, int] = (0, 0),
    rpm: int = 20,
    tpm: int = 1_000_000,
    window_ms: int = 2_000,
) -> tuple[list[str], str]:
    """One try_acquire by a process still running the previous version: (reply, grant id)."""
    names = [
        keys.limiter_log,
        keys.limiter_cum,
        keys.limiter_waiting,
        keys.limiter_waiting_until,
        keys.limiter_seq,
        keys.limiter_epoch,
        keys.cooldown_until,
        keys.cooldown_reason,
        keys.rpm_current,
        keys.tpm_current,
        keys.stats,
    ]
    gid = os.urandom(12).hex()
    args = [f"{gid}:{tokens}", "0", "0", seen[0], seen[1], "0", rpm, tpm, window_ms]
    args += [WINDOW_TTL_MARGIN_MS, "1.0", 2000, LIMITER_EPOCH_TTL_MS, STATS_TTL_MS, 64]
    raw = client.eval(previous_source("limiter_acquire"), len(names), *names, *args)
    return str(raw).split(), gid
