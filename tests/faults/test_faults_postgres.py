"""PostgreSQL stopped for 30 seconds mid-run (a private cluster), then started again.

Jobs that finish their Gemini call during the outage hold the result and retry the
write (no call is made twice); the scheduler backs off instead of failing; once the
database is back every document completes, each written once.
"""

from __future__ import annotations

import time

import pytest

from control_plane.queue.migrate import apply_schema
from tests.faults.checks import DONE, assert_outcome, recovery_after, running_jobs, wait_all_done
from tests.faults.conftest import FaultPool, Reporter
from tests.support.emulator import EmulatorProcess
from tests.support.pg_server import private_postgres
from tests.support.pool import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

OUTAGE_S = 30.0


def test_postgres_down_for_30_seconds(
    fault_pool: FaultPool, redis_url: str, emulator: EmulatorProcess, report: Reporter
) -> None:
    emulator.configure(latency_ms=1500, latency_jitter_ms=200)
    with private_postgres() as server:
        dsn = server.create_database("faults")
        apply_schema(dsn)
        with fault_pool(dsn, redis_url) as pool:
            expected = pool.seed(index=16, acte=8)
            scheduler = pool.scheduler()
            workers = pool.workers(processes=1, threads=4)
            wait_until(
                lambda: pool.status_counts().get(DONE, 0) >= 4 and len(running_jobs(dsn)) >= 2,
                60,
                message=lambda: f"progress: {pool.status_counts()}\n{workers.log()[-2000:]}",
            )
            server.stop("fast")
            time.sleep(OUTAGE_S)
            server.start()
            back_at = time.time()
            recovery = recovery_after(dsn, back_at, 90)
            wait_all_done(pool, len(expected), 90, workers, scheduler)

            assert workers.alive() and scheduler.alive(), "a process exited during the outage"
            assert "job.complete_retry" in workers.log(), "no result was held during the outage"
            assert "job.result_dropped" not in workers.log()
            assert ".backoff" in scheduler.log(), "the scheduler did not back off"
            # Held results are written, not redone: no document is sent to Gemini twice.
            outcome = assert_outcome(pool, emulator, expected, extra_calls=0)
            report(
                fault=f"postgres down {OUTAGE_S:.0f} s",
                documents_in=len(expected),
                completed=len(expected),
                duplicates=outcome["duplicates"],
                quota_windows_exceeded=int(outcome["stats"]["window_exceeded"]),
                extra_gemini_calls=outcome["extra"],
                recovery_s=recovery,
                notes="recovery = database back to first document claimed after it done",
            )
            assert workers.stop() == 0
            assert scheduler.stop() == 0
