"""The beyond-the-seed switches reach the live scheduler: real Redis, real PostgreSQL.

A `Scheduler` runs its jobs in-process (no APScheduler loop): rebalance and feed are
called directly, and the published `worker_pool:allocation` is read back from Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from control_plane.config import load_settings
from control_plane.keys import Keys
from control_plane.pacing import record_job_seconds, wait_slot_freed, wake_slot_waiters
from control_plane.queue.environments import Environments
from control_plane.queue.migrate import apply_schema
from control_plane.scheduler.service import Scheduler

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn(pg_database_factory) -> str:  # type: ignore[no-untyped-def]
    dsn = pg_database_factory("strategies")
    apply_schema(dsn)
    return dsn  # type: ignore[no-any-return]


@pytest.fixture
def make_scheduler(
    dsn: str, redis_url: str, redis_client: redis.Redis, keys: Keys
) -> Iterator[Any]:
    made: list[Scheduler] = []

    def make(**env: Any) -> Scheduler:
        settings = load_settings(
            dev_database_url=dsn,
            redis_url=redis_url,
            ocr_redis_prefix=keys.prefix,
            ocr_dramatiq_namespace=keys.prefix.rstrip(":"),
            ocr_worker_pool_size=4,
            **env,
        )
        sched = Scheduler(settings, redis_client, keys, Environments.from_settings(settings))
        made.append(sched)
        assert sched.tick_leadership(), "a lone scheduler must lead"
        return sched

    yield make
    for sched in made:
        sched.shutdown()


def seed(dsn: str, index: int, acte: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for source, count in (("index", index), ("acte", acte)):
            for n in range(count):
                conn.execute(
                    "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
                    "VALUES (%s, %s, 3)",
                    (source, f"b/{source}-{n}.pdf"),
                )


def published(sched: Scheduler) -> tuple[int, int]:
    allocation = sched.pool.read_allocation()
    assert allocation is not None
    return allocation["index"], allocation["acte"]


@pytest.mark.parametrize(("weighting", "expected"), [("count", (3, 1)), ("time", (2, 2))])
def test_time_weighting_uses_recorded_job_seconds(
    make_scheduler: Any,
    dsn: str,
    redis_client: redis.Redis,
    keys: Keys,
    weighting: str,
    expected: tuple[int, int],
) -> None:
    for _ in range(3):  # actes hold a slot four times longer
        record_job_seconds(redis_client, keys, "index", 1.0)
        record_job_seconds(redis_client, keys, "acte", 4.0)
    seed(dsn, index=40, acte=10)
    sched = make_scheduler(ocr_allocation_weighting=weighting, ocr_allocation_hysteresis=0)
    sched.rebalance()
    assert published(sched) == expected


def test_lent_slots_return_at_the_next_feed(make_scheduler: Any, dsn: str) -> None:
    seed(dsn, index=6, acte=0)
    sched = make_scheduler(ocr_allocation_lend_idle=True, ocr_rebalance_interval_ms=3_600_000)
    assert published(sched) == (4, 0), "the idle acte minimum is lent to index"
    seed(dsn, index=0, acte=2)
    result = sched.feed()  # not a rebalance: the feed notices the lent type has work
    assert result is not None
    _, acte = published(sched)
    assert acte >= 1, "acte got its slot back without waiting for the rebalance"
    assert result.claimed["acte"] >= 1


def test_seed_rule_keeps_the_minimum_of_an_idle_type(make_scheduler: Any, dsn: str) -> None:
    seed(dsn, index=6, acte=0)
    sched = make_scheduler(ocr_allocation_lend_idle=False)
    assert published(sched) == (3, 1)


@pytest.mark.parametrize(("hysteresis", "expected"), [(0.0, (3, 1)), (0.25, (2, 2))])
def test_hysteresis_holds_the_split_near_a_rounding_edge(
    make_scheduler: Any, hysteresis: float, expected: tuple[int, int]
) -> None:
    sched = make_scheduler(ocr_allocation_hysteresis=hysteresis)
    sched.apply_queue({"index": 62, "acte": 38})  # ideal index 2.48: 2/2
    assert published(sched) == (2, 2)
    sched.apply_queue({"index": 64, "acte": 36})  # ideal 2.56: the seed rule flips to 3/1
    assert published(sched) == expected
    sched.apply_queue({"index": 90, "acte": 10})  # a real shift always goes through
    assert published(sched) == (3, 1)


def test_job_seconds_are_an_ewma(redis_client: redis.Redis, keys: Keys) -> None:
    record_job_seconds(redis_client, keys, "acte", 10.0)
    record_job_seconds(redis_client, keys, "acte", 20.0)
    raw = redis_client.hgetall(keys.job_seconds)
    assert float(raw["acte"]) == pytest.approx(12.0)
    assert raw["acte:n"] == "2"


def test_a_released_slot_wakes_a_waiter_at_once(redis_client: redis.Redis, keys: Keys) -> None:
    assert not wait_slot_freed(redis_client, keys, "index", 0.05)
    woke: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        if wait_slot_freed(redis_client, keys, "index", 5.0):
            woke.append(time.monotonic() - started)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    wake_slot_waiters(redis_client, keys)
    thread.join(6)
    assert woke and woke[0] < 4.0, "woken by the release, not by its 5 s timeout"
