"""The running pool: real `python scheduler.py` and `dramatiq actors` processes.

Local Redis and PostgreSQL, the Gemini emulator with latency and its own quota,
generated PDFs with known text. What the user is promised must hold of the
running processes: every document done with its own text, the quota never
exceeded, the allocation following the queue, graceful stops.
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DONE = 5


def normalise(text: str) -> str:
    """Text without page markers or layout whitespace, for comparing OCR output to the source."""
    lines = [ln for ln in text.splitlines() if not re.match(r"^\s*-{2,}\s*page\b", ln, re.I)]
    return " ".join(" ".join(lines).split())


def all_done(pool: PoolHarness, total: int) -> bool:
    return pool.status_counts().get(DONE, 0) >= total


def test_mixed_queue_is_processed_end_to_end_inside_the_quota(pool: PoolHarness, emulator) -> None:
    expected = pool.seed(index=120, acte=60)
    scheduler = pool.scheduler()
    workers = pool.workers(processes=2, threads=3)
    wait_until(
        lambda: all_done(pool, len(expected)),
        240,
        message=lambda: (
            f"all documents done: {pool.status_counts()}\n"
            f"{workers.log()[-3000:]}\n{scheduler.log()[-2000:]}"
        ),
    )

    rows = pool.rows()
    assert {r["status_id"] for r in rows} == {DONE}
    for row in rows:
        assert normalise(row["file_content"]) == normalise(expected[row["id"]]), row["id"]
        assert row["attempts"] == 1, f"document {row['id']} took {row['attempts']} attempts"

    stats = emulator.stats()
    assert not stats["window_exceeded"], stats["window"]
    assert stats["sent_429"] == 0, "the limiter should keep every call inside the quota"
    assert stats["max_calls_per_document"] == 1, "a document was sent twice"

    client = pool.redis()
    allocation = json.loads(client.get(f"{pool.prefix}worker_pool:allocation"))
    assert allocation["index"] + allocation["acte"] == allocation["total"] == 4
    assignments = client.hgetall(f"{pool.prefix}worker_pool:assignments")
    assert sorted(assignments) == [f"ocr-worker-{i}" for i in range(1, 5)]
    assert set(assignments.values()) <= {"index", "acte"}
    workers_hash = client.hgetall(f"{pool.prefix}gemini:workers")
    assert len(workers_hash) == 6, workers_hash  # 2 processes x 3 threads
    info = json.loads(next(iter(workers_hash.values())))
    assert {"host", "pid", "mode", "document", "heartbeat_ms"} <= set(
        info
    ) or "last_heartbeat" in str(info)
    wait_until(
        lambda: float(client.get(f"{pool.prefix}server:cpu:allocated") or 0) == 0,
        10,
        message="capacity given back once the pool is idle",
    )
    assert int(client.get(f"{pool.prefix}gemini:rpm:current") or 0) >= 0

    status = pool.run("status")
    assert status.returncode == 0, status.stderr
    for needle in (
        "WORKER POOL STATUS",
        "Worker Allocation:",
        "   Index workers: ",
        "   Active workers: 4",
        "Gemini API Usage:",
        "   RPM: ",
        "   TPM: ",
        "Server Capacity:",
        "   Workers by type:",
        "     - Registre: 0",
    ):
        assert needle in status.stdout, status.stdout
    assert "WORKER POOL STATUS" in scheduler.log()  # the status block was printed live too

    # The doctor passes on this live, healthy pool (real scheduler, workers, emulator);
    # Gemini headroom recovers once the run's requests leave the limiter's window.
    doctor: list[str] = []

    def doctor_passes() -> bool:
        run = pool.run("doctor")
        doctor[:] = [run.stdout + run.stderr]
        return run.returncode == 0

    wait_until(doctor_passes, 60, message=lambda: f"doctor on a healthy pool:\n{doctor[0]}")
    assert "✔ worker threads: 6 registered for a pool of 4" in doctor[0], doctor[0]
    assert "✔ host clocks vs Redis TIME: 2 host(s)" in doctor[0], doctor[0]  # workers + doctor

    assert workers.stop() == 0
    assert scheduler.stop() == 0
    assert "scheduler stopped cleanly" in scheduler.log()
    log = scheduler.log()
    shutdown = log[log.index("SHUTTING DOWN WORKER POOL") :]
    assert (
        shutdown.index("Stopping workers...")
        < shutdown.index("Stopping capacity manager...")
        < shutdown.index("WORKER POOL STOPPED SUCCESSFULLY")
    ), shutdown


def test_seed_rebalancing_examples_live(pool: PoolHarness) -> None:
    """Pool of 4, minimums 1/1: queue 50/5 gives 3/1, then 5/50 gives 1/3 (no workers)."""
    pool.seed(index=50, acte=5)
    scheduler = pool.scheduler(OCR_FEED_INTERVAL_MS=3_600_000)
    client = pool.redis()

    def allocation() -> dict:
        raw = client.get(f"{pool.prefix}worker_pool:allocation")
        return json.loads(raw) if raw else {}

    wait_until(
        lambda: allocation().get("index") == 3,
        20,
        message=lambda: f"3/1 for 50/5, got {allocation()}",
    )
    assert allocation()["acte"] == 1
    # The queue shifts: 45 index documents are taken elsewhere, 45 acte arrive.
    with pool_connection(pool) as conn:
        conn.execute(
            "UPDATE extraction_queue SET status_id = 1 WHERE id IN "
            "(SELECT id FROM extraction_queue WHERE document_source = 'index' AND status_id = 3 "
            "ORDER BY id LIMIT 45)"
        )
    pool.seed(index=0, acte=45, start=100)
    wait_until(
        lambda: allocation().get("acte") == 3,
        10,
        message=lambda: f"1/3 for 5/50 within one rebalance, got {allocation()}",
    )
    assert allocation()["index"] == 1
    log = scheduler.log()
    assert re.search(r"rebalance\.changed.*index 3 / acte 1", log), log[-2000:]
    assert re.search(r"rebalance\.changed.*index 1 / acte 3", log), log[-2000:]
    assert scheduler.stop() == 0


def test_sigterm_to_workers_finishes_jobs_and_restart_completes_the_rest(
    pool: PoolHarness, emulator
) -> None:
    emulator.configure(latency_ms=600, latency_jitter_ms=0)
    expected = pool.seed(index=20, acte=10)
    pool.scheduler()
    workers = pool.workers(processes=1, threads=4)
    wait_until(lambda: pool.status_counts().get(DONE, 0) >= 4, 60, message="some progress")
    workers.send(signal.SIGTERM)
    assert workers.popen.wait(60) == 0, workers.log()[-3000:]
    assert "worker process stopped cleanly" in workers.log()
    counts = pool.status_counts()
    assert counts.get(4, 0) == 0, counts
    restarted = pool.workers(processes=1, threads=4)
    wait_until(
        lambda: all_done(pool, len(expected)),
        120,
        message=lambda: f"all done after restart: {pool.status_counts()}",
    )
    stats = emulator.stats()
    assert stats["max_calls_per_document"] == 1, "a finished job was redone"
    assert restarted.stop() == 0


def test_standby_scheduler_takes_over_after_leader_is_killed(pool: PoolHarness) -> None:
    leader = pool.scheduler()
    client = pool.redis()
    wait_until(lambda: client.get(f"{pool.prefix}scheduler:leader"), 15, message="a leader")
    first = client.get(f"{pool.prefix}scheduler:leader")
    standby = pool.scheduler()
    wait_until(
        lambda: "standby" in standby.log() or "scheduler.started" in standby.log(),
        15,
        message="the standby to start",
    )
    assert client.get(f"{pool.prefix}scheduler:leader") == first
    leader.send(signal.SIGKILL, group=True)
    wait_until(
        lambda: client.get(f"{pool.prefix}scheduler:leader") not in (None, first),
        20,
        message="the standby to take the lead",
    )
    wait_until(lambda: "leader.acquired" in standby.log(), 5, message="takeover logged")
    assert standby.stop() == 0
    assert client.get(f"{pool.prefix}scheduler:leader") is None, "leadership released on exit"


def pool_connection(pool: PoolHarness):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(pool.dsn, autocommit=True)


def test_a_job_past_the_time_limit_fails_with_a_clear_message(pool: PoolHarness, emulator) -> None:
    emulator.configure(latency_ms=3000, latency_jitter_ms=0)
    pool.seed(index=1, acte=0)
    pool.scheduler()
    workers = pool.workers(
        processes=1,
        threads=1,
        OCR_JOB_TIME_LIMIT_MS=1000,
        OCR_MAX_ATTEMPTS=1,
        GEMINI_TIMEOUT_MS=1000,  # a job time limit below one Gemini timeout is refused
    )
    wait_until(
        lambda: pool.status_counts().get(4, 0) == 1,
        60,
        message=lambda: f"the document to fail: {pool.status_counts()}",
    )
    (row,) = pool.rows()
    assert "OCR_JOB_TIME_LIMIT_MS" in row["error_message"], row["error_message"]
    assert "Traceback" not in workers.log()
    assert workers.stop() == 0
