"""Short database blips must not stop the reaper for good (issue 10, fenced deliveries).

Attack on the merged reaper: after ANY failed call to an environment (a dropped
connection, one statement timeout) the scheduler waited a whole lease
(`OCR_LEASE_MS`) of uninterrupted answers before reaping it again. Blips more frequent
than one lease (600 s by default) therefore stopped reaping that environment for good:
a document whose worker process died stayed in flight forever, and a crash-looping PDF
never reached ERREUR. The settle now lasts as long as the outage did, plus a few
heartbeats (still at most a lease).

Real scheduler process, real PostgreSQL: the blips are real terminated connections.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ME = "blip-test"
LEASE_MS = 60_000  # the reaper runs every 15 s (a quarter of it)
# A blip (every pooled connection dropped) costs the scheduler ~10 s of failed calls and
# back-off; blips this often are well under one lease: the old settle never ended.
BLIP_EVERY_S = 37.0


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, application_name=ME, autocommit=True)


def blip(dsn: str) -> int:
    """Drop every connection of the scheduler to the database (not ours)."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name <> %s",
            (ME,),
        ).fetchall()
    return len(rows)


def lost_deliveries(dsn: str, doc_id: int) -> int:
    with connect(dsn) as conn:
        found = conn.execute(
            "SELECT lost_deliveries FROM extraction_queue WHERE id = %s", (doc_id,)
        ).fetchone()
    assert found is not None
    return int(found[0])


def test_blips_shorter_than_a_lease_do_not_stop_the_reaper(pool: PoolHarness) -> None:
    scheduler = pool.scheduler(OCR_LEASE_MS=str(LEASE_MS))
    wait_until(
        lambda: "leader.acquired" in scheduler.log() and "rebalance" in scheduler.log(),
        60,
        message=lambda: f"the scheduler leading\n{scheduler.log()[-2000:]}",
    )
    time.sleep(1.0)
    assert blip(pool.dsn) > 0, "the scheduler holds no connection to drop"
    # A delivery whose worker process died: started, its 1 s lease never renewed (as
    # ocr_claim + ocr_start leave it; written directly so the feed cannot claim it first).
    with connect(pool.dsn) as conn:
        found = conn.execute(
            "INSERT INTO extraction_queue (document_source, storage_path, status_id, attempts,"
            " worker_id, lease_token, lease_expires_at, claimed_at, started_at)"
            " VALUES ('index', 'file:///nowhere.pdf', 2, 1, 'dead-worker', gen_random_uuid(),"
            " now() + interval '1 second', now(), now()) RETURNING id"
        ).fetchone()
    assert found is not None
    doc_id = int(found[0])
    stop = threading.Event()

    def blips() -> None:
        while not stop.wait(BLIP_EVERY_S):
            blip(pool.dsn)

    thread = threading.Thread(target=blips, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: lost_deliveries(pool.dsn, doc_id) == 1,
            3 * BLIP_EVERY_S + 5,
            message=lambda: f"the dead delivery reaped\n{scheduler.log()[-3000:]}",
        )
    finally:
        stop.set()
        thread.join(5)
    assert "queue.counts_unavailable" in scheduler.log() or "unavailable" in scheduler.log()
    assert scheduler.stop() == 0
