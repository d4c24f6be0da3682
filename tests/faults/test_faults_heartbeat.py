"""Heartbeats that cannot starve each other (issue 10, point 5), with real processes.

1. The database (a private cluster) is stopped while jobs hold slots, for several slot
   TTLs: each lease renewal now waits out the database pool timeout, but slot renewal
   runs on its own loop, so no slot passes its TTL under a live job (none is reclaimed,
   none handed to another job) and never more Gemini calls run than there are slots.
2. A job whose lease is taken over (as a reap + re-claim elsewhere would) stops before
   its next Gemini call: the rest of its chunks are never sent, nothing is written.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from control_plane.queue.migrate import apply_schema
from tests.faults.checks import DONE, duplicate_writes, running_jobs, wait_all_done
from tests.faults.conftest import FAULT_ENV, FaultPool, Reporter
from tests.support.emulator import EmulatorProcess
from tests.support.pg_server import private_postgres
from tests.support.pool import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

OUTAGE_S = 12.0  # four slot TTLs (OCR_SLOT_TTL_MS=3000 in FAULT_ENV)
POOL_SIZE = 4


def lapsed_held_slots(client, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Slots whose holder is still registered but whose lease lies in the past."""
    sec, usec = client.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    lapsed = client.zrangebyscore(f"{prefix}worker_pool:slot_leases", "-inf", now_ms)
    return [s for s in lapsed if client.hexists(f"{prefix}worker_pool:holders", s)]


def test_database_down_never_lets_a_slot_lapse_under_a_live_job(
    fault_pool: FaultPool, redis_url: str, emulator: EmulatorProcess, report: Reporter
) -> None:
    emulator.configure(latency_ms=2000, latency_jitter_ms=200)
    with private_postgres() as server:
        dsn = server.create_database("heartbeat")
        apply_schema(dsn)
        with fault_pool(dsn, redis_url) as pool:
            pool.settings_env.update({"OCR_PAGES_PER_CHUNK": "1"})
            expected = pool.seed(index=0, acte=12, pages=3)
            scheduler = pool.scheduler()
            workers = pool.workers(processes=1, threads=POOL_SIZE + 2)
            wait_until(
                lambda: len(running_jobs(dsn)) >= 3,
                60,
                message=lambda: f"jobs running: {pool.status_counts()}\n{workers.log()[-2000:]}",
            )
            client = pool.redis()
            lapsed: list[str] = []
            busy_peak = 0
            stop = threading.Event()

            def watch() -> None:
                nonlocal busy_peak
                watcher = pool.redis()
                while not stop.is_set():
                    lapsed.extend(lapsed_held_slots(watcher, pool.prefix))
                    busy_peak = max(busy_peak, watcher.hlen(f"{pool.prefix}worker_pool:holders"))
                    time.sleep(0.1)
                watcher.close()

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            held_before = set(client.hkeys(f"{pool.prefix}worker_pool:holders"))
            server.stop("fast")
            time.sleep(OUTAGE_S)
            held_during = set(client.hkeys(f"{pool.prefix}worker_pool:holders"))
            server.start()
            try:
                wait_all_done(pool, len(expected), 120, workers, scheduler)
            finally:
                stop.set()
                watcher.join(5)
            wlog, slog = workers.log(), scheduler.log()
            assert "worker.lease_renew_failed" in wlog, "the outage did not reach lease renewal"
            assert not lapsed, f"slot(s) passed their TTL under a live job: {sorted(set(lapsed))}"
            assert "worker.slot_lost" not in wlog and "pool.slot_lost" not in wlog
            assert "pool.slot_reclaimed" not in slog + wlog
            # The jobs that held slots when the database went away still hold them.
            assert held_before <= held_during, (held_before, held_during)
            stats = emulator.stats()
            assert stats["max_in_flight"] <= POOL_SIZE, stats["max_in_flight"]
            assert busy_peak <= POOL_SIZE
            assert pool.status_counts() == {DONE: len(expected)}
            assert duplicate_writes(dsn) == 0
            # Three one-page chunks per document, each sent once: no job was redone.
            assert stats["max_calls_per_document"] == 1
            assert stats["requests"] == 3 * len(expected), stats["requests"]
            assert not stats["window_exceeded"]
            report(
                fault=f"postgres down {OUTAGE_S:.0f} s, slots held",
                documents_in=len(expected),
                completed=pool.status_counts().get(DONE, 0),
                extra_gemini_calls=stats["requests"] - 3 * len(expected),
                notes=f"slot TTL {FAULT_ENV['OCR_SLOT_TTL_MS']} ms; lapsed under a job: 0; "
                f"max in flight {stats['max_in_flight']}/{POOL_SIZE}",
            )
            client.close()
            assert workers.stop() == 0
            assert scheduler.stop() == 0


def test_a_job_whose_lease_was_taken_over_stops_before_its_next_call(
    fault_pool: FaultPool, redis_url: str, emulator: EmulatorProcess, pg_database_factory, report
) -> None:
    emulator.configure(latency_ms=3000, latency_jitter_ms=0)
    dsn = pg_database_factory("takeover")
    with fault_pool(dsn, redis_url) as pool:
        pool.settings_env.update({"OCR_PAGES_PER_CHUNK": "1"})
        expected = pool.seed(index=0, acte=1, pages=5)
        (doc_id,) = expected
        pool.scheduler()
        workers = pool.workers(processes=1, threads=2)
        wait_until(
            lambda: emulator.stats()["in_flight"] >= 1,
            60,
            message=lambda: f"the first call\n{workers.log()[-2000:]}",
        )
        # Someone else now holds the lease (as a reap and a new claim would leave it).
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE extraction_queue SET lease_token = gen_random_uuid(), "
                "lease_expires_at = now() + interval '1 hour' WHERE id = %s",
                (doc_id,),
            )
        wait_until(
            lambda: "worker.lease_lost" in workers.log(),
            20,
            message=lambda: f"the lease loss noticed\n{workers.log()[-2000:]}",
        )
        wait_until(
            lambda: emulator.stats()["in_flight"] == 0,
            20,
            message="the call in flight to end",
        )
        calls = emulator.stats()["requests"]
        time.sleep(8)  # long enough for two more chunk calls, had the job gone on
        assert emulator.stats()["requests"] == calls, "the job went on calling Gemini"
        assert calls <= 2, f"{calls} calls: the job did not stop before its next call"
        log = workers.log()
        assert "job.released" in log and "lease was taken over" in log, log[-3000:]
        (row,) = pool.rows()
        assert row["status_id"] == 2 and row["file_content"] is None, row  # nothing written
        report(
            fault="lease taken over mid-document",
            documents_in=1,
            extra_gemini_calls=calls,
            extra_calls_allowed=1,  # the call in flight when the lease was taken
            notes=f"5 chunks; {calls} call(s) before the job stopped",
        )
        assert workers.stop() == 0


def test_a_job_whose_slot_was_taken_stops_before_its_next_call(
    fault_pool: FaultPool, redis_url: str, emulator: EmulatorProcess, pg_database_factory, report
) -> None:
    emulator.configure(latency_ms=3000, latency_jitter_ms=0)
    dsn = pg_database_factory("slotloss")
    with fault_pool(dsn, redis_url) as pool:
        pool.settings_env.update({"OCR_PAGES_PER_CHUNK": "1"})
        pool.seed(index=0, acte=1, pages=5)
        scheduler = pool.scheduler()
        workers = pool.workers(processes=1, threads=2)
        wait_until(
            lambda: emulator.stats()["in_flight"] >= 1,
            60,
            message=lambda: f"the first call\n{workers.log()[-2000:]}",
        )
        assert scheduler.stop() == 0  # so that the released document stays at ready
        client = pool.redis()
        holders_key = f"{pool.prefix}worker_pool:holders"
        (slot,) = client.hkeys(holders_key)
        # The slot lapsed and went to another job (a new holder with its own token).
        holder = json.loads(client.hget(holders_key, slot))
        other = "someone-else"
        client.hset(holders_key, slot, json.dumps({**holder, "token": other}))
        wait_until(
            lambda: "worker.slot_lost" in workers.log(),
            20,
            message=lambda: f"the slot loss noticed\n{workers.log()[-2000:]}",
        )
        wait_until(lambda: emulator.stats()["in_flight"] == 0, 20, message="the call to end")
        calls = emulator.stats()["requests"]
        time.sleep(8)  # long enough for two more chunk calls, had the job gone on
        assert emulator.stats()["requests"] == calls, "the job went on calling Gemini"
        assert calls <= 2, f"{calls} calls: the job did not stop before its next call"
        wait_until(lambda: pool.status_counts() == {3: 1}, 20, message="the document released")
        (row,) = pool.rows()
        assert row["attempts"] == 0 and row["file_content"] is None, row
        assert "slot lapsed" in workers.log()
        # The other holder's slot is untouched by our release (fenced on the token).
        assert json.loads(client.hget(holders_key, slot))["token"] == other
        report(
            fault="slot taken mid-document",
            documents_in=1,
            extra_gemini_calls=calls,
            extra_calls_allowed=1,
            notes=f"5 chunks; {calls} call(s) before the job stopped; document back to ready",
        )
        client.close()
        assert workers.stop() == 0
