"""Issue 10: fenced leaders and fenced deliveries, with real processes and real signals.

- a leader paused with SIGSTOP past its lock TTL changes nothing once it resumes;
- after a Redis flush the epoch does not go backwards and a stale leader cannot block
  the new leader's publishes;
- one claim delivered twice at once runs once;
- a document whose processing kills its worker process ends in ERREUR after
  OCR_MAX_ATTEMPTS starts, saying so, while the other documents are done;
- a feed whose enqueue fails gives the whole batch back at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.faults.checks import DONE, ERROR, IN_FLIGHT, READY, assert_outcome, db_now
from tests.faults.conftest import FaultPool
from tests.support.emulator import EmulatorProcess
from tests.support.fencing import (
    allocation,
    claim_messages,
    pid_of,
    publish_allocation,
    row,
    send,
)
from tests.support.pool import wait_until
from tests.support.redis_server import private_redis

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

LEADER_TTL_S = 10.0  # LEADER_LOCK_TTL_MS
ACTIONS = ("feed.enqueued", "pool.allocation_published", "reap.leases", "reap.slots")


def epoch_of(client: object, prefix: str) -> int:
    return int(client.get(f"{prefix}scheduler:epoch") or 0)  # type: ignore[attr-defined]


def fence(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT epoch FROM ocr_leader_fence").fetchone()
    return int(found[0]) if found else 0


def stale_claims(dsn: str, epoch: int, since: float) -> int:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM extraction_queue WHERE claim_epoch = %s"
            " AND claimed_at > to_timestamp(%s)",
            (epoch, since),
        ).fetchone()
    return int(found[0]) if found else 0


def test_leader_paused_past_its_ttl_changes_nothing_after_it_resumes(
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    emulator: EmulatorProcess,
) -> None:
    emulator.configure(latency_ms=400, latency_jitter_ms=50)
    with fault_pool(pg_database_factory("fencing"), redis_url) as pool:
        expected = pool.seed(index=40, acte=16)
        client = pool.redis()
        leader = pool.scheduler()
        first = wait_until(
            lambda: client.get(f"{pool.prefix}scheduler:leader"), 15, message="a leader"
        )
        stale_epoch = epoch_of(client, pool.prefix)
        standby = pool.scheduler()
        wait_until(lambda: "scheduler.started" in standby.log(), 20, message="the standby")
        workers = pool.workers(processes=1, threads=4)
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) >= 3,
            60,
            message=lambda: f"progress: {pool.status_counts()}\n{workers.log()[-2000:]}",
        )
        leader.send(signal.SIGSTOP)  # stalled mid-whatever: it still believes it leads
        try:
            wait_until(
                lambda: client.get(f"{pool.prefix}scheduler:leader") not in (None, first),
                LEADER_TTL_S + 10,
                message=lambda: f"the standby to lead\n{standby.log()[-2000:]}",
            )
            new_epoch = epoch_of(client, pool.prefix)
            assert new_epoch > stale_epoch
            wait_until(lambda: fence(pool.dsn) == new_epoch, 10, message="the database fence")
            # The new leader acts (feeds) within one lock TTL of taking over.
            taken = db_now(pool.dsn)
            wait_until(
                lambda: (
                    stale_claims(pool.dsn, new_epoch, taken) > 0
                    or pool.status_counts().get(READY, 0) == 0
                ),
                LEADER_TTL_S,
                message="the new leader to claim",
            )
        finally:
            resumed_at = db_now(pool.dsn)
            log_offset = len(leader.log())
            leader.send(signal.SIGCONT)
        owner = client.get(f"{pool.prefix}scheduler:leader")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # the stale leader runs its due jobs now
            assert stale_claims(pool.dsn, stale_epoch, resumed_at) == 0, "stale leader claimed"
            plan = allocation(client, pool.prefix)
            assert plan.get("leader") == owner and plan.get("epoch") == new_epoch, plan
            assert client.get(f"{pool.prefix}scheduler:leader") == owner
            assert fence(pool.dsn) == new_epoch
            time.sleep(0.1)
        after = leader.log()[log_offset:]
        assert not [a for a in ACTIONS if a in after], after[-3000:]
        assert "leader.lost" in after or "leader.fenced" in after, after[-3000:]

        wait_until(
            lambda: pool.status_counts().get(DONE, 0) >= len(expected),
            120,
            message=lambda: f"all done: {pool.status_counts()}\n{standby.log()[-2000:]}",
        )
        assert_outcome(pool, emulator, expected, extra_calls=0)
        client.close()
        assert workers.stop() == 0
        assert leader.stop() == 0 and standby.stop() == 0


def test_redis_flush_never_takes_the_epoch_back_nor_lets_a_stale_leader_block(
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    emulator: EmulatorProcess,
) -> None:
    with private_redis() as server, fault_pool(pg_database_factory("fencing"), server.url) as pool:
        pool.seed(index=6, acte=3)
        client = pool.redis()
        stale = pool.scheduler()
        first = wait_until(
            lambda: client.get(f"{pool.prefix}scheduler:leader"), 15, message="a leader"
        )
        wait_until(lambda: allocation(client, pool.prefix), 10, message="an allocation")
        stale_epoch = epoch_of(client, pool.prefix)
        stale.send(signal.SIGSTOP)
        try:
            client.flushall()  # counter, lock, allocation: all gone
            fresh = pool.scheduler()  # a scheduler that never saw the old epochs
            wait_until(
                lambda: client.get(f"{pool.prefix}scheduler:leader") not in (None, first),
                20,
                message=lambda: f"the new scheduler to lead\n{fresh.log()[-2000:]}",
            )
            new_epoch = epoch_of(client, pool.prefix)
            assert new_epoch > stale_epoch, "the epoch went backwards after the flush"
            wait_until(lambda: fence(pool.dsn) == new_epoch, 10, message="the database fence")
        finally:
            log_offset = len(stale.log())
            stale.send(signal.SIGCONT)
        owner = client.get(f"{pool.prefix}scheduler:leader")
        seen: set[int] = set()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # rebalance every second: publishes keep landing
            plan = allocation(client, pool.prefix)
            if plan:
                assert plan["leader"] == owner and plan["epoch"] == new_epoch, plan
                seen.add(int(plan["updated_at_ms"]))
            time.sleep(0.2)
        assert len(seen) >= 3, "the real leader's publishes stopped"
        assert "pool.allocation_published" not in stale.log()[log_offset:]
        assert "pool.allocation_refused" not in fresh.log()
        assert fence(pool.dsn) == new_epoch
        client.close()
        assert fresh.stop() == 0 and stale.stop() == 0


def test_one_claim_delivered_twice_at_once_runs_once(
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    emulator: EmulatorProcess,
) -> None:
    emulator.configure(latency_ms=1500, latency_jitter_ms=0)
    with fault_pool(pg_database_factory("fencing"), redis_url) as pool:
        expected = pool.seed(index=1, acte=0)
        publish_allocation(pool, {"index": 2, "acte": 2})
        workers = pool.workers(processes=2, threads=1)
        wait_until(lambda: workers.log().count("worker.boot") >= 2, 30, message="two workers")
        (message,) = claim_messages(pool, "index", 1)
        send(pool, message, message)  # the same claim, delivered twice
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) == 1,
            30,
            message=lambda: f"done: {pool.status_counts()}\n{workers.log()[-3000:]}",
        )
        wait_until(lambda: "job.stale" in workers.log(), 10, message="the second delivery")
        assert workers.log().count("job.started") == 1, workers.log()[-3000:]
        assert_outcome(pool, emulator, expected, extra_calls=0)  # one call set, one write
        assert row(pool.dsn, message.id)["attempts"] == 1
        assert workers.stop() == 0


def test_a_document_that_kills_its_worker_ends_in_error_after_the_limit(
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    emulator: EmulatorProcess,
) -> None:
    emulator.configure(latency_ms=1200, latency_jitter_ms=0)
    with fault_pool(pg_database_factory("fencing"), redis_url) as pool:
        expected = pool.seed(index=8, acte=4)
        poison = max(i for i in expected)  # the last acte
        others = {i: t for i, t in expected.items() if i != poison}
        scheduler = pool.scheduler()
        # One thread per process: the kill takes no other document down with it (a
        # bystander killed with the poison three times would end in ERREUR too).
        workers = pool.workers(processes=3, threads=1)
        kills = 0
        deadline = time.monotonic() + 150
        while row(pool.dsn, poison)["status_id"] != ERROR:
            assert time.monotonic() < deadline, f"poison row: {row(pool.dsn, poison)}"
            state = row(pool.dsn, poison)
            if (
                state["status_id"] == IN_FLIGHT
                and state["started_at"]
                and state["attempts"] > kills
            ):
                # The document's processing kills its worker process (an out-of-memory PDF).
                os.kill(pid_of(state["worker_id"]), signal.SIGKILL)
                kills += 1
                workers.popen.wait(60)  # dramatiq stops the group when a child dies
                workers = pool.workers(processes=3, threads=1)  # the supervisor restarts it
            time.sleep(0.02)
        dead = row(pool.dsn, poison)
        assert kills == 3 and dead["attempts"] == 3 and dead["lost_deliveries"] == 3, dead
        assert dead["error_message"].startswith(
            "worker process died during processing 3 time(s) (last worker "
        ), dead["error_message"]
        assert "attempt 3 of 3" in dead["error_message"]
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) == len(others),
            90,
            message=lambda: f"the others done: {pool.status_counts()}\n{workers.log()[-2000:]}",
        )
        assert pool.status_counts() == {DONE: len(others), ERROR: 1}
        assert workers.stop() == 0
        assert scheduler.stop() == 0


def test_a_failing_enqueue_gives_the_whole_batch_back_at_once(
    fault_pool: FaultPool,
    pg_database_factory: Callable[[str], str],
    redis_url: str,
) -> None:
    with fault_pool(pg_database_factory("fencing"), redis_url) as pool:
        pool.seed(index=12, acte=3)
        client = pool.redis()
        # Every index enqueue fails inside Redis (a broken queue key); acte works.
        client.set(f"{pool.namespace}:ocr-index.msgs", "not a hash")
        scheduler = pool.scheduler(OCR_FEED_LOOKAHEAD="4")
        wait_until(lambda: "feed.given_back" in scheduler.log(), 20, message="a give-back")
        enq_acte = f"{pool.prefix}worker_pool:enqueued:acte"
        enq_index = f"{pool.prefix}worker_pool:enqueued:index"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with psycopg.connect(pool.dsn) as conn:
                held = conn.execute(
                    "SELECT count(*) FROM extraction_queue WHERE document_source = 'index'"
                    " AND status_id = 2 AND claimed_at < now() - interval '1 second'"
                ).fetchone()
            assert held is not None and held[0] == 0, "index documents stranded in a claim"
            assert client.zcard(enq_index) == 0, "enqueued set counts messages never sent"
            time.sleep(0.2)
        # acte: the set holds exactly the messages on the queue
        on_queue = client.lrange(f"{pool.namespace}:ocr-acte", 0, -1)
        assert client.zcard(enq_acte) == len(on_queue) > 0
        # Index rows are ready, but for a batch the feed claimed this very second (it tries
        # again every second and gives it back at once).
        with psycopg.connect(pool.dsn) as conn:
            stranded = conn.execute(
                "SELECT count(*) FROM extraction_queue WHERE document_source = 'index'"
                " AND status_id <> %s AND NOT (status_id = 2"
                " AND claimed_at >= now() - interval '1 second')",
                (READY,),
            ).fetchone()
        assert stranded == (0,), "index documents neither ready nor in a fresh claim"
        assert all(r["attempts"] == 0 for r in pool.rows())
        client.close()
        assert scheduler.stop() == 0
