"""Gemini misbehaving: 429 storms, a per-day quota, 5xx bursts, timeouts, bad answers.

Real `scheduler.py` + `dramatiq actors` processes against the emulator. What must
hold (DESIGN.md section 9): a 429 pauses every worker through the shared cooldown
(visible in Redis) and costs no attempt; a per-day quota pauses the pool until the
daily reset without burning attempts; 5xx, timeouts and malformed answers are
retried; blocked answers fail their document at once with a precise message; no
worker thread dies.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_plane.gemini.classify import seconds_until_daily_reset
from tests.support import fault_fixtures
from tests.support.emulator import EmulatorProcess
from tests.support.fault_fixtures import DONE, ERROR, figures, threads_heartbeating
from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

fx_emulator = fault_fixtures.fx_emulator
fx_pool = fault_fixtures.fx_pool

THREADS = 4


def cooldown_ms(pool: PoolHarness) -> int:
    """Remaining shared cooldown by Redis time, read from the raw key under the prefix."""
    client = pool.redis()
    try:
        until = client.get(f"{pool.prefix}gemini:cooldown:until")
        now_s, now_us = client.time()
    finally:
        client.close()
    if until is None:
        return 0
    return max(0, int(float(until)) - (int(now_s) * 1000 + int(now_us) // 1000))


def calls_during_cooldowns(log: list[dict[str, Any]], delay_s: float, slack_s: float = 0.3) -> int:
    """Calls sent while a 429's cooldown held (allowing `slack_s` for the pause to spread)."""
    pauses = [
        (e["done"] + slack_s, e["done"] + delay_s - slack_s) for e in log if e["status"] == 429
    ]
    return sum(1 for e in log for lo, hi in pauses if lo < e["t"] < hi)


def attempts_by_status(pool: PoolHarness) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for row in pool.rows():
        out.setdefault(row["status_id"], []).append(row["attempts"])
    return out


def test_429_storm_pauses_every_worker_through_redis_and_costs_no_attempt(
    fx_pool: PoolHarness, fx_emulator: EmulatorProcess, report: Any
) -> None:
    storm, delay = 8, 2.0
    fx_emulator.configure(storm_requests=storm, storm_retry_delay_s=delay)
    expected = fx_pool.seed(index=8, acte=4)
    fx_pool.scheduler()
    workers = fx_pool.workers(processes=1, threads=THREADS)

    seen = wait_until(
        lambda: cooldown_ms(fx_pool),
        30,
        interval=0.05,
        message=lambda: f"gemini:cooldown:until during the storm\n{workers.log()[-2000:]}",
    )
    assert 0 < seen <= delay * 1000
    wait_until(
        lambda: fx_pool.status_counts().get(DONE, 0) == len(expected),
        60,
        message=lambda: f"all done after the storm: {fx_pool.status_counts()}",
    )

    rows = fx_pool.rows()
    assert all(r["attempts"] == 1 for r in rows), [(r["id"], r["attempts"]) for r in rows]
    stats = fx_emulator.stats(log=True)
    assert stats["sent_429"] == storm, "only the storm answered 429: the limiter kept the quota"
    assert calls_during_cooldowns(stats["log"], delay) == 0, "a worker called during a cooldown"
    assert threads_heartbeating(fx_pool, THREADS), "every worker thread still heartbeats"
    assert workers.alive()
    log = workers.log()
    assert "Gemini rate limit hit" in log and "every worker pauses 2 s" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    row = report(
        **figures(
            "gemini 429 storm (8 x 2 s)", fx_pool, fx_emulator, faulty={"429"}, errors_expected=0
        )
    )
    assert (row.duplicates, row.quota_windows_exceeded, row.errors) == (0, 0, 0)
    assert workers.stop() == 0


def test_per_day_quota_pauses_until_the_reset_without_burning_attempts(
    fx_pool: PoolHarness, fx_emulator: EmulatorProcess, report: Any
) -> None:
    fx_emulator.configure(per_day_quota=True)
    expected = fx_pool.seed(index=4, acte=2)
    # Short job time limit and lease: a pool that held documents through the pause, or
    # let their leases lapse, would burn attempts (and end in 4) within seconds here.
    env = {
        "OCR_JOB_TIME_LIMIT_MS": 2000,
        "OCR_LEASE_MS": 3000,
        "OCR_SLOT_TTL_MS": 2000,  # below the lease (refused otherwise)
        "GEMINI_TIMEOUT_MS": 1000,  # at most the job time limit (refused otherwise)
    }
    scheduler = fx_pool.scheduler(**env)
    workers = fx_pool.workers(processes=1, threads=THREADS, **env)

    remaining = wait_until(
        lambda: cooldown_ms(fx_pool),
        30,
        interval=0.05,
        message=lambda: f"the daily cooldown\n{workers.log()[-2000:]}",
    )
    to_reset = seconds_until_daily_reset(datetime.now(UTC)) * 1000
    assert abs(remaining - to_reset) < 120_000, (remaining, to_reset)
    wait_until(lambda: "feed.paused" in scheduler.log(), 10, message="the scheduler to pause")
    time.sleep(8)  # several job time limits, lease lengths and reaps
    for name, log in (("workers", workers.log()), ("scheduler", scheduler.log())):
        assert re.search(
            r"daily Gemini quota exhausted \(.*PerDay.*\): waiting [\d.]+ h for "
            r"the reset at \d{4}-\d\d-\d\d \d\d:\d\d Pacific",
            log,
        ), (name, log[-3000:])
    assert "document back to ready: Gemini paused for" in workers.log()
    by_status = attempts_by_status(fx_pool)
    assert ERROR not in by_status, fx_pool.rows()
    assert by_status == {3: [0] * len(expected)}, "every document ready again, no attempt spent"
    stats = fx_emulator.stats()
    assert stats["sent_429_per_day"] <= THREADS, "the pool kept calling through a daily pause"
    assert threads_heartbeating(fx_pool, THREADS) and workers.alive()
    assert "Traceback" not in workers.log(), workers.log()[-3000:]

    # The reset comes: the quota is back and the cooldown ends; the pool resumes on its own.
    fx_emulator.configure(per_day_quota=False)
    reset_at = time.monotonic()
    client = fx_pool.redis()
    client.delete(f"{fx_pool.prefix}gemini:cooldown:until")
    client.close()
    wait_until(
        lambda: fx_pool.status_counts().get(DONE, 0) == len(expected),
        30,
        message=lambda: f"all done after the reset: {fx_pool.status_counts()}",
    )
    resumed_s = round(time.monotonic() - reset_at, 1)
    assert all(r["attempts"] == 1 for r in fx_pool.rows()), fx_pool.rows()
    assert "feed.resumed" in scheduler.log()
    assert workers.stop() == 0 and scheduler.stop() == 0
    row = report(
        **{
            **figures(
                "gemini per-day quota (pause, reset)",
                fx_pool,
                fx_emulator,
                faulty={"429"},
                errors_expected=0,
                notes=f"429/day={stats['sent_429_per_day']}; recovery = all done after the reset",
            ),
            "recovery_s": resumed_s,
        }
    )
    assert (row.duplicates, row.quota_windows_exceeded) == (0, 0)


PERMANENT_FAULTS = {
    "blocked_prompt": r"^pages 1-\d+ of \d+: Gemini blocked the document "
    r"\(promptFeedback\.blockReason=\w+",
    "safety": r"^pages 1-\d+ of \d+: Gemini withheld the text \(finishReason=SAFETY\)$",
}
TRANSIENT_FAULTS = ("500", "503", "timeout", "malformed_json")


def chunk_hash(path: Path) -> str:
    """The emulator's id of a one-chunk document: its bytes' sha256 prefix."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_5xx_timeouts_malformed_and_blocked_answers_at_set_rates(
    fx_pool: PoolHarness, fx_emulator: EmulatorProcess, report: Any
) -> None:
    fx_emulator.configure(
        fault_rates={
            "500": 0.08,
            "503": 0.08,
            "timeout": 0.04,
            "malformed_json": 0.06,
            "blocked_prompt": 0.05,
            "safety": 0.04,
        },
        timeout_sleep_s=1.5,
    )
    fx_pool.seed(index=20, acte=10)
    env = {"GEMINI_TIMEOUT_MS": 1000, "GEMINI_MAX_CALL_ATTEMPTS": 5}
    fx_pool.scheduler(**env)
    workers = fx_pool.workers(processes=1, threads=THREADS, **env)
    wait_until(
        lambda: sum(fx_pool.status_counts().get(s, 0) for s in (DONE, ERROR)) == 30,
        90,
        message=lambda: f"every document final: {fx_pool.status_counts()}",
    )

    stats = fx_emulator.stats(log=True)
    permanent_hashes = {e["doc"] for e in stats["log"] if e.get("fault") in PERMANENT_FAULTS}
    with psycopg.connect(fx_pool.dsn) as conn:
        paths: dict[int, str] = dict(
            conn.execute("SELECT id, storage_path FROM extraction_queue").fetchall()
        )
    for row in fx_pool.rows():
        digest = chunk_hash(Path(paths[row["id"]].removeprefix("file://")))
        if row["status_id"] == ERROR:
            calls = sorted((e for e in stats["log"] if e["doc"] == digest), key=lambda e: e["t"])
            assert calls, (row["error_message"], digest, len(stats["log"]), stats["requests"])
            fault = calls[-1].get("fault")  # the answer that ended it; no call after it
            assert fault in PERMANENT_FAULTS, (row, [c.get("fault") for c in calls])
            assert re.match(PERMANENT_FAULTS[fault], row["error_message"]), row["error_message"]
            assert row["attempts"] == 1, "a permanent answer is not retried"
        else:
            assert row["status_id"] == DONE and row["file_content"], row
            assert digest not in permanent_hashes, "a blocked document must not complete"
    errors = fx_pool.status_counts().get(ERROR, 0)
    assert errors == len(permanent_hashes), "each blocked document fails once, at once"
    assert all(stats["faults"].get(f, 0) > 0 for f in TRANSIENT_FAULTS), stats["faults"]
    assert threads_heartbeating(fx_pool, THREADS) and workers.alive()
    log = workers.log()
    assert "Traceback" not in log, log[-3000:]
    for said in (
        "Gemini call timed out",
        "malformed body",
        "Gemini 503 UNAVAILABLE",
        "Gemini 500 INTERNAL",
    ):
        assert said in log, said
    row = report(
        **figures(
            "gemini 500/503/timeout/malformed/blocked at rates",
            fx_pool,
            fx_emulator,
            faulty=set(TRANSIENT_FAULTS) | set(PERMANENT_FAULTS),
            errors_expected=len(permanent_hashes),
        )
    )
    assert (row.duplicates, row.quota_windows_exceeded) == (0, 0)
    assert workers.stop() == 0
