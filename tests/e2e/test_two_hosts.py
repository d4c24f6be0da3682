"""Per-host capacity with real processes (issue 10, point 6).

Two worker groups started with different OCR_HOST_NAME, each with a budget that
has room for half the pool (3 acte slots of 6): the scheduler fits the plan to the
sum of the live hosts' budgets, the whole pool runs at once (the emulator sees 6
calls in flight), and neither host's own counter ever goes over its budget.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DONE = 5
# 4 vCPU - 20% = 3.2 vCPU per host: 3 acte slots (1 vCPU each), not 4.
HOST_ENV = {"SERVER_MAX_CPU": "4", "SERVER_MAX_RAM": "16"}
HOST_CPU_BUDGET = 3.2


def test_two_hosts_each_fill_their_own_budget_and_the_whole_pool_runs(
    pool: PoolHarness, emulator
) -> None:
    emulator.configure(latency_ms=1500, latency_jitter_ms=100)
    expected = pool.seed(index=0, acte=30, pages=1)
    # The scheduler's own budget alone would fit only 3 slots: it must use the hosts' sum.
    pool.settings_env.update({"OCR_WORKER_POOL_SIZE": "6", **HOST_ENV})
    workers_a = pool.workers(processes=1, threads=5, OCR_HOST_NAME="host-a")
    workers_b = pool.workers(processes=1, threads=5, OCR_HOST_NAME="host-b")
    client = pool.redis()
    wait_until(
        lambda: client.hlen(f"{pool.prefix}server:hosts") == 2,
        30,
        message="both hosts registered their budget",
    )
    scheduler = pool.scheduler()

    peaks: dict[str, float] = {}
    holders_peak: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        sampler = pool.redis()
        while not stop.is_set():
            for host, value in sampler.hgetall(f"{pool.prefix}server:cpu:allocated:hosts").items():
                peaks[host] = max(peaks.get(host, 0.0), float(value))
            count: dict[str, int] = {}
            for raw in sampler.hvals(f"{pool.prefix}worker_pool:holders"):
                host = raw.split('"host": "', 1)[-1].split('"', 1)[0]
                count[host] = count.get(host, 0) + 1
            for host, n in count.items():
                holders_peak[host] = max(holders_peak.get(host, 0), n)
            time.sleep(0.05)
        sampler.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) >= len(expected),
            180,
            message=lambda: f"all done: {pool.status_counts()}\n{scheduler.log()[-2000:]}",
        )
    finally:
        stop.set()
        sampler.join(5)
    stats = emulator.stats()
    allocation = client.get(f"{pool.prefix}worker_pool:allocation")
    print(f"\nTWO HOSTS max_in_flight={stats['max_in_flight']} peaks={peaks} {holders_peak}")
    assert stats["max_in_flight"] == 6, (stats["max_in_flight"], allocation)
    assert set(peaks) == {"host-a", "host-b"}, peaks
    assert all(v <= HOST_CPU_BUDGET + 1e-9 for v in peaks.values()), peaks
    assert holders_peak == {"host-a": 3, "host-b": 3}, holders_peak
    assert stats["max_calls_per_document"] == 1
    assert not stats["window_exceeded"]
    for proc in (workers_a, workers_b, scheduler):
        assert proc.stop() == 0, proc.log()[-2000:]
    client.close()
