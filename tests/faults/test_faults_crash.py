"""Crashes: `kill -9` of the worker processes mid-job, and of the scheduler leader.

The test is the supervisor: it kills the whole `dramatiq` process group (master
and children die together, as in a crash of the container) and starts it again.
Leases bring the interrupted documents back; the token fence keeps the killed
job from writing anything; the audit trigger counts result writes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from functools import partial

import pytest

from tests.faults.checks import (
    DONE,
    assert_outcome,
    db_now,
    last_completed_at,
    running_jobs,
    wait_all_done,
)
from tests.faults.conftest import FaultPool, Reporter
from tests.support.emulator import EmulatorProcess
from tests.support.pool import PoolHarness, Proc, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

KILLS = 3


def mid_job(pool: PoolHarness, done_at_least: int) -> bool:
    """Progress was made and at least two jobs are running (a kill interrupts them)."""
    return pool.status_counts().get(DONE, 0) >= done_at_least and len(running_jobs(pool.dsn)) >= 2


def progress(pool: PoolHarness, workers: Proc, kill: int) -> str:
    return f"progress before kill {kill}: {pool.status_counts()}\n{workers.log()[-2000:]}"


def test_worker_killed_mid_job_several_times(
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    emulator: EmulatorProcess,
    report: Reporter,
) -> None:
    emulator.configure(latency_ms=1500, latency_jitter_ms=200)
    with fault_pool(pg_database_factory("faults"), redis_url) as pool:
        expected = pool.seed(index=24, acte=12)
        scheduler = pool.scheduler()
        workers = pool.workers(processes=2, threads=2)
        interrupted = 0
        kills: list[tuple[float, list[int]]] = []
        for n in range(KILLS):
            # Kill while jobs are mid-call, a few completions after the last restart.
            floor = pool.status_counts().get(DONE, 0)
            wait_until(
                partial(mid_job, pool, floor + 3),
                60,
                message=partial(progress, pool, workers, n + 1),
            )
            workers.send(signal.SIGKILL, group=True)
            workers.popen.wait(10)
            killed_at = db_now(pool.dsn)
            in_flight = running_jobs(pool.dsn)  # nobody else runs jobs: these were killed
            assert in_flight, "the kill should interrupt running jobs"
            interrupted += len(in_flight)
            kills.append((killed_at, in_flight))
            workers = pool.workers(processes=2, threads=2)  # the supervisor restarts it
        wait_all_done(pool, len(expected), 120, workers, scheduler)

        outcome = assert_outcome(pool, emulator, expected, extra_calls=interrupted)
        assert outcome["stats"]["max_calls_per_document"] <= 1 + KILLS
        recovery = 0.0
        for killed_at, ids in kills:
            done_at = last_completed_at(pool.dsn, ids)
            assert done_at is not None
            recovery = max(recovery, done_at - killed_at)
        report(
            fault=f"worker group kill -9 x{KILLS}",
            documents_in=len(expected),
            completed=len(expected),
            duplicates=outcome["duplicates"],
            quota_windows_exceeded=int(outcome["stats"]["window_exceeded"]),
            extra_gemini_calls=outcome["extra"],
            extra_calls_allowed=interrupted,
            recovery_s=recovery,
            notes="recovery = kill to last interrupted document done (lease 8 s)",
        )
        assert workers.stop() == 0
        assert scheduler.stop() == 0


def test_scheduler_leader_killed_standby_takes_over(
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    emulator: EmulatorProcess,
    report: Reporter,
) -> None:
    emulator.configure(latency_ms=600, latency_jitter_ms=100)
    with fault_pool(pg_database_factory("faults"), redis_url) as pool:
        expected = pool.seed(index=20, acte=10)
        client = pool.redis()
        leader = pool.scheduler()
        first = wait_until(
            lambda: client.get(f"{pool.prefix}scheduler:leader"), 15, message="a leader"
        )
        standby = pool.scheduler()
        wait_until(lambda: "scheduler.started" in standby.log(), 20, message="the standby")
        workers = pool.workers(processes=1, threads=4)
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) >= 5,
            60,
            message=lambda: f"progress: {pool.status_counts()}\n{workers.log()[-2000:]}",
        )
        leader.send(signal.SIGKILL, group=True)
        leader.popen.wait(10)
        killed = time.monotonic()
        done_at_kill = pool.status_counts().get(DONE, 0)
        wait_until(
            lambda: client.get(f"{pool.prefix}scheduler:leader") not in (None, first),
            30,
            message=lambda: f"the standby to lead\n{standby.log()[-2000:]}",
        )
        takeover = time.monotonic() - killed
        # Recovery: the new leader feeds again (work moves past what was already enqueued).
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) >= min(len(expected), done_at_kill + 8),
            60,
            message=lambda: f"feeding after takeover: {pool.status_counts()}",
        )
        recovery = time.monotonic() - killed
        wait_all_done(pool, len(expected), 90, workers, standby)
        outcome = assert_outcome(pool, emulator, expected, extra_calls=0)
        assert "leader.acquired" in standby.log()
        report(
            fault="scheduler leader kill -9",
            documents_in=len(expected),
            completed=len(expected),
            duplicates=outcome["duplicates"],
            quota_windows_exceeded=int(outcome["stats"]["window_exceeded"]),
            extra_gemini_calls=outcome["extra"],
            recovery_s=recovery,
            notes=f"leader lock taken over after {takeover:.1f} s (lock TTL 10 s)",
        )
        assert workers.stop() == 0
        assert standby.stop() == 0
