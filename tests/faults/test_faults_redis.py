"""Redis restarted (empty: no persistence) or flushed while the pool works at a quota-bound load.

A private redis-server carries everything: leader lock, allocation, slots, limiter,
Dramatiq queues. After the loss the processes reconnect (no process exits: no crash
loop), the Lua scripts reload on NOSCRIPT, the scheduler republishes the allocation
from the database's counts, the documents whose queued messages were lost come back
when their leases lapse, and the limiter restarts conservatively: the emulator never
sees a window over its quota.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.checks import (
    DONE,
    assert_outcome,
    db_now,
    recovery_after,
    running_jobs,
    wait_all_done,
)
from tests.faults.conftest import FaultPool, Reporter
from tests.support.emulator import EmulatorProcess
from tests.support.pool import wait_until
from tests.support.redis_server import private_redis

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

# Quota-bound: 4 slots at ~150 ms a call could send ~50 calls per 2 s window.
POOL_RPM, EMULATOR_RPM = 10, 11


@pytest.mark.parametrize("fault", ["restart", "flush"])
def test_redis_lost_during_a_run(
    fault: str,
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    emulator: EmulatorProcess,
    report: Reporter,
) -> None:
    emulator.configure(latency_ms=150, latency_jitter_ms=30, rpm_limit=EMULATOR_RPM)
    with private_redis() as server, fault_pool(pg_database_factory("faults"), server.url) as pool:
        pool.settings_env["GEMINI_RPM_LIMIT"] = str(POOL_RPM)
        expected = pool.seed(index=30, acte=15)
        scheduler = pool.scheduler()
        workers = pool.workers(processes=1, threads=4)
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) >= 12,
            60,
            message=lambda: f"progress: {pool.status_counts()}\n{workers.log()[-2000:]}",
        )
        interrupted = len(running_jobs(pool.dsn))
        fault_at = db_now(pool.dsn)
        if fault == "restart":
            server.restart(down_for=1.0)
        else:
            client = pool.redis()
            client.flushall()
            client.close()
        recovery = recovery_after(pool.dsn, fault_at, 60)
        wait_all_done(pool, len(expected), 90, workers, scheduler)

        assert workers.alive() and scheduler.alive(), "a process exited after the Redis loss"
        assert workers.log().count("worker.boot") == 1, "a worker process restarted"
        client = pool.redis()
        assert client.get(f"{pool.prefix}worker_pool:allocation"), "allocation not republished"
        assert client.get(f"{pool.prefix}scheduler:leader"), "nobody leads after the loss"
        client.close()
        # A job caught mid-call may lose its grant's settle and be retried: one call each.
        outcome = assert_outcome(pool, emulator, expected, extra_calls=interrupted)
        assert outcome["stats"]["sent_429"] == 0, "the limiter let a call over the quota"
        report(
            fault=f"redis {fault}",
            documents_in=len(expected),
            completed=len(expected),
            duplicates=outcome["duplicates"],
            quota_windows_exceeded=int(outcome["stats"]["window_exceeded"]),
            extra_gemini_calls=outcome["extra"],
            extra_calls_allowed=interrupted,
            recovery_s=recovery,
            notes=f"peak {outcome['stats']['window']['max_requests_offered']}/{EMULATOR_RPM} "
            "calls per window; recovery = fault to first document claimed after it completed",
        )
        assert workers.stop() == 0
        assert scheduler.stop() == 0
