"""Issue 15 with real processes: OCR_WORKER_POOL_SIZE=auto and learned slot costs.

The scheduler and a dramatiq worker group run as processes against the emulator (1 s
per document, the suites' 2 s quota window). The autopilot starts at 4, grows while
documents wait and the quota has room, publishes its size as `total` with as many
slots; the workers, measuring their own CPU time and memory, learn that a slot waiting
on Gemini costs far less than the declared 1.5 / 1 vCPU, and the status block says
both. Nothing is lost, nothing exceeds the quota.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DONE = 5
HOST = "host-learned"


def test_auto_grows_within_the_quota_and_learns_that_waiting_slots_are_cheap(
    pool: PoolHarness, emulator
) -> None:
    emulator.configure(latency_ms=1000, latency_jitter_ms=50)
    expected = pool.seed(index=40, acte=20, pages=1)
    pool.settings_env.update(
        {
            "OCR_WORKER_POOL_SIZE": "auto",
            "OCR_WORKER_POOL_MAX": "8",
            "OCR_CAPACITY_COSTS": "learned",
            "OCR_HOST_NAME": HOST,
            "OCR_REBALANCE_INTERVAL_MS": "1000",
        }
    )
    pool.workers(processes=1, threads=10)
    scheduler = pool.scheduler()
    client = pool.redis()
    totals: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        sampler = pool.redis()
        while not stop.is_set():
            raw = sampler.get(f"{pool.prefix}worker_pool:allocation")
            if raw:
                total = int(json.loads(raw)["total"])
                if not totals or totals[-1] != total:
                    totals.append(total)
            time.sleep(0.05)
        sampler.close()

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) >= len(expected),
            180,
            message=lambda: f"all done: {pool.status_counts()}\n{scheduler.log()[-2000:]}",
        )
    finally:
        stop.set()
        thread.join(5)
    stats = emulator.stats()
    assert totals[0] == 4, totals  # starts small
    assert max(totals) == 8, totals  # grew to the maximum: the quota had room
    assert totals.index(8) > 1, totals  # gradually, not at once
    assert stats["sent_429"] == 0
    assert not stats["window_exceeded"]
    assert stats["max_calls_per_document"] == 1
    allocation = json.loads(client.get(f"{pool.prefix}worker_pool:allocation") or "{}")
    assert allocation["autopilot"]["max"] == 8

    learned = client.hgetall(f"{pool.prefix}server:costs:learned")
    assert learned, "the workers learned costs"
    for field, raw in learned.items():
        host, kind = field.split("|")
        assert host == HOST
        cost = json.loads(raw)
        declared = {"index": 1.5, "acte": 1.0}[kind]
        assert cost["samples"] >= 1
        # waiting on Gemini costs far less CPU than declared
        assert cost["cpu"] < declared / 2, (kind, cost)

    status = pool.run("status", timeout=60)
    assert status.returncode == 0, status.stderr
    assert "Autopilot: pool " in status.stdout, status.stdout
    assert f"{HOST}: CPU" in status.stdout and "learned " in status.stdout, status.stdout
    assert "autopilot.changed" in scheduler.log()
