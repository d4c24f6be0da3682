"""Fixtures and figures for the Gemini, bad-input and bad-configuration fault runs.

Import the fixtures into a test module (`from tests.support.fault_fixtures import
fx_emulator, fx_pool`): they differ from tests/faults/conftest.py's (no latency worth
killing into, the shared services only). `figures` condenses a finished run into the
row of the fault table for that conftest's `report` fixture.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.checks import duplicate_writes, install_audit
from tests.support.emulator import EmulatorProcess
from tests.support.pool import PoolHarness, fresh_pool, quota_emulator

DONE, ERROR = 5, 4


@pytest.fixture
def fx_emulator() -> Iterator[EmulatorProcess]:
    """An emulator with the pool's quota (a little above it), small latency, no faults yet."""
    with quota_emulator(latency_ms=30, seed=7) as emu:
        yield emu


@pytest.fixture
def fx_pool(
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    fx_emulator: EmulatorProcess,
    tmp_path: Path,
) -> Iterator[PoolHarness]:
    """A pool harness on a fresh database and Redis prefix, limiter under the emulator quota."""
    dsn = pg_database_factory("faults")
    with fresh_pool(dsn, redis_url, fx_emulator.url, tmp_path) as harness:
        install_audit(dsn)
        yield harness


def successful_answers_per_chunk(emulator: EmulatorProcess) -> Counter[str]:
    """Per inline document (chunk) hash: how many clean 200 answers the emulator gave."""
    log = emulator.stats(log=True)["log"]
    return Counter(e["doc"] for e in log if e["status"] == 200 and not e.get("fault"))


def recovery_after(emulator: EmulatorProcess, faulty: set[str]) -> float:
    """Seconds from the last faulty answer to the next clean one (0 if no fault was seen)."""
    log = sorted(emulator.stats(log=True)["log"], key=lambda e: e["t"])
    last = max((e["done"] for e in log if _is_faulty(e, faulty)), default=None)
    if last is None:
        return 0.0
    after = [e["done"] for e in log if e["t"] >= last and e["status"] == 200 and not e.get("fault")]
    return round(min(after) - last, 2) if after else float("inf")


def _is_faulty(entry: dict[str, Any], faulty: set[str]) -> bool:
    if entry.get("fault") in faulty:
        return True
    return "429" in faulty and entry["status"] == 429


def figures(
    fault: str,
    pool: PoolHarness,
    emulator: EmulatorProcess,
    *,
    faulty: set[str],
    errors_expected: int,
    notes: str = "",
) -> dict[str, Any]:
    """The fault-table row of a finished run (for the `report` fixture of tests/faults)."""
    counts = pool.status_counts()
    stats = emulator.stats()
    answers = successful_answers_per_chunk(emulator)
    return {
        "fault": fault,
        "documents_in": sum(counts.values()),
        "completed": counts.get(DONE, 0),
        "errors": counts.get(ERROR, 0),
        "errors_expected": errors_expected,
        # written twice in the database, or answered twice by Gemini for the same chunk
        "duplicates": duplicate_writes(pool.dsn) + sum(1 for n in answers.values() if n > 1),
        "quota_windows_exceeded": int(bool(stats["window_exceeded"])),
        "recovery_s": recovery_after(emulator, faulty),
        "notes": notes or f"requests={stats['requests']} statuses={stats['statuses']}",
    }


def threads_heartbeating(pool: PoolHarness, expected: int, max_age_ms: int = 3000) -> bool:
    """True when `expected` worker threads are registered with a fresh heartbeat."""
    client = pool.redis()
    try:
        now_s, now_us = client.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        entries = client.hgetall(f"{pool.prefix}gemini:workers")
    finally:
        client.close()
    fresh = 0
    for raw in entries.values():
        info = json.loads(raw)
        beat = info.get("last_heartbeat_ms") or info.get("last_heartbeat") or 0
        if now_ms - int(float(beat)) <= max_age_ms:
            fresh += 1
    return fresh == expected
