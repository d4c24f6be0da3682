"""A configuration pause longer than what is left of a job's OCR_JOB_TIME_LIMIT_MS
(attack a2 on issue 11). Real scheduler.py and dramatiq processes, the emulator, real
Redis and PostgreSQL.

A job held its document while Gemini was paused, past its own time limit: Dramatiq
interrupted it, `JobTimeLimitError` counted an attempt, and a pause of a few job limits
put documents in ERREUR although nothing was wrong with them. A job now gives its
document back (no attempt) before its time limit would end the hold.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.checks import DONE, ERROR, wait_all_done
from tests.support import fault_fixtures
from tests.support.emulator import EmulatorProcess
from tests.support.pool import PoolHarness

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

fx_emulator = fault_fixtures.fx_emulator
fx_pool = fault_fixtures.fx_pool

ENV = {
    "GEMINI_TIMEOUT_MS": 3000,
    "OCR_JOB_TIME_LIMIT_MS": 6000,  # valid: not below one Gemini timeout
    "GEMINI_CONFIG_PROBE_MS": 4000,
    "OCR_BREAKER_PROBE_MS": 2000,
    "OCR_RETRY_BASE_MS": 500,
    "OCR_RETRY_MAX_MS": 2000,
    "OCR_LEASE_MS": 10000,
    "OCR_WORKER_POOL_SIZE": 4,
    "SERVER_MAX_CPU": 16,
    "OCR_DOCUMENT_ALLOWED_HOSTS": "127.0.0.1",
}


def test_a_pause_longer_than_the_job_limit_burns_no_attempt(
    fx_pool: PoolHarness, fx_emulator: EmulatorProcess
) -> None:
    fx_emulator.configure(latency_ms=100, fault_rates={"failed_precondition": 1.0})
    total = len(fx_pool.seed(index=6, acte=2))
    fx_pool.settings_env.update({k: str(v) for k, v in ENV.items()})
    scheduler = fx_pool.scheduler()
    workers = fx_pool.workers(processes=1, threads=6)
    time.sleep(25.0)  # about four job time limits of pause
    assert fx_pool.status_counts().get(ERROR, 0) == 0, fx_pool.rows()
    fx_emulator.configure(fault_rates={})
    wait_all_done(fx_pool, total, 120, workers, scheduler)
    rows = fx_pool.rows()
    assert {r["status_id"] for r in rows} == {DONE}
    used = {r["id"]: r["attempts"] for r in rows}
    assert set(used.values()) == {1}, f"no attempt counted for the pause: {used}"
    assert "job ran past OCR_JOB_TIME_LIMIT_MS" not in workers.log()
    assert workers.stop() == 0 and scheduler.stop() == 0
