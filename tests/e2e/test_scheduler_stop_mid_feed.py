"""Stopping the scheduler in the middle of a feed strands no batch (issue 10, point 3).

Attack on the merged feed: SIGTERM (or Ctrl+C) while a feed's claim is in flight.
The shutdown released the leadership and closed the database pools at once, without
waiting for the feed; the claim then committed, the enqueue was refused (no longer the
leader) and the give-back could not reach the closed pool: every document of the batch
stayed claimed, on no queue, for a whole lease (`OCR_LEASE_MS`, 10 minutes by default).
Now the shutdown lets the feed in flight finish (enqueue or give back) first.

Real scheduler process, real PostgreSQL: the claim is held in flight by a real row lock
on the leader fence that every claim takes.
"""

from __future__ import annotations

import signal
import time

import psycopg
import pytest

from control_plane.dispatch import QUEUE_NAMES
from control_plane.keys import dramatiq_queue_keys
from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def claims_waiting(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE '%ocr_claim%'"
        ).fetchone()
    return int(found[0]) if found else 0


def claimed_ids(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id FROM extraction_queue WHERE status_id = 2 AND started_at IS NULL"
        ).fetchall()
    return {int(r[0]) for r in rows}


def test_sigterm_while_a_claim_is_in_flight_strands_no_document(pool: PoolHarness) -> None:
    pool.seed(index=3, acte=0)
    fence = psycopg.connect(pool.dsn)  # holds the fence row: every claim waits on it
    try:
        fence.execute("SELECT epoch FROM ocr_leader_fence WHERE singleton FOR UPDATE")
        scheduler = pool.scheduler()
        wait_until(
            lambda: claims_waiting(pool.dsn) >= 1,
            60,
            message=lambda: f"a claim in flight\n{scheduler.log()[-2000:]}",
        )
        scheduler.send(signal.SIGTERM)
        wait_until(lambda: "scheduler.stopping" in scheduler.log(), 30, message="the stop")
        time.sleep(3.0)  # the old shutdown had released the lead and closed the pools by now
    finally:
        fence.rollback()  # the claim goes on
        fence.close()
    assert scheduler.popen.wait(60) == 0, scheduler.log()[-3000:]
    client = pool.redis()
    try:
        queue, _ = dramatiq_queue_keys(pool.namespace, QUEUE_NAMES["index"])
        on_queue = client.llen(queue)
    finally:
        client.close()
    stranded = claimed_ids(pool.dsn)
    # Every claimed document is on a queue (fed before the lead was handed over), or
    # back to ready: none waits a whole lease for the reaper.
    assert len(stranded) <= on_queue, (
        f"claimed on no queue: {sorted(stranded)} ({on_queue} message(s))\n"
        f"{scheduler.log()[-3000:]}"
    )
