"""The scheduler's issue-14 series, from a real Scheduler on real Redis and PostgreSQL.

Leader gauge and epoch on every scheduler (the standby says 0), the last successful
feed / reap / rebalance per environment, documents per environment and type, 429s
actually received (not cooldowns), and a standby whose gauges stay live.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from control_plane.config import load_settings
from control_plane.keys import Keys
from control_plane.queue.environments import Environments
from control_plane.queue.migrate import apply_schema
from control_plane.scheduler.service import Scheduler
from tests.support.queue_fixtures import add_ready

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn(pg_database_factory) -> str:  # type: ignore[no-untyped-def]
    dsn = pg_database_factory("metrics")
    apply_schema(dsn)
    return dsn  # type: ignore[no-any-return]


@pytest.fixture
def make(dsn: str, redis_url: str, redis_client: redis.Redis, keys: Keys) -> Iterator[Any]:
    made: list[Scheduler] = []

    def build(owner: str) -> Scheduler:
        settings = load_settings(
            dev_database_url=dsn,
            redis_url=redis_url,
            ocr_redis_prefix=keys.prefix,
            ocr_dramatiq_namespace=keys.prefix.rstrip(":"),
        )
        sched = Scheduler(
            settings, redis_client, keys, Environments.from_settings(settings), owner=owner
        )
        made.append(sched)
        return sched

    yield build
    for sched in made:
        sched.shutdown()


def value(sched: Scheduler, name: str, **labels: str) -> float | None:
    return sched.metrics.registry.get_sample_value(name, labels)


def test_leader_gauge_with_epoch_on_every_scheduler(make: Any) -> None:
    leader, standby = make("host-a:1:aaa"), make("host-b:2:bbb")
    assert leader.tick_leadership() and not standby.tick_leadership()
    epoch = leader.leader.epoch
    assert value(leader, "ocr_scheduler_leader", instance_id="host-a:1:aaa") == 1
    assert value(standby, "ocr_scheduler_leader", instance_id="host-b:2:bbb") == 0
    assert value(leader, "ocr_scheduler_leader_epoch") == epoch
    assert value(standby, "ocr_scheduler_leader_epoch") == epoch, "the standby knows the epoch"
    leader.leader.release()
    assert standby.tick_leadership()
    assert value(standby, "ocr_scheduler_leader", instance_id="host-b:2:bbb") == 1
    assert value(standby, "ocr_scheduler_leader_epoch") > epoch, "a takeover raises the epoch"


def test_last_successful_feed_reap_rebalance_per_environment(make: Any, dsn: str) -> None:
    sched = make("host-a:1:aaa")
    before = time.time()
    assert sched.tick_leadership()  # taking the lead rebalances
    add_ready(dsn, 2, source="index")
    assert sched.feed() is not None
    sched.reap()
    for step in ("rebalance", "feed", "reap"):
        at = value(sched, "ocr_last_success_timestamp_seconds", step=step, environment="dev")
        assert at is not None and before <= at <= time.time(), step


def test_feed_success_is_not_recorded_for_an_unreachable_environment(
    redis_url: str, redis_client: redis.Redis, keys: Keys, dsn: str
) -> None:
    settings = load_settings(
        dev_database_url=dsn,
        prod_database_url="postgresql://postgres@127.0.0.1:1/none",
        redis_url=redis_url,
        ocr_redis_prefix=keys.prefix,
        ocr_dramatiq_namespace=keys.prefix.rstrip(":"),
    )
    sched = Scheduler(settings, redis_client, keys, Environments.from_settings(settings))
    try:
        assert sched.tick_leadership()
        add_ready(dsn, 2, source="acte")
        # The takeover waited on the unreachable database: renew the lease as the
        # scheduler's 2 s leadership job does before acting again.
        assert sched.tick_leadership()
        sched.feed()
        assert value(sched, "ocr_last_success_timestamp_seconds", step="feed", environment="dev")
        assert (
            value(sched, "ocr_last_success_timestamp_seconds", step="feed", environment="prod")
            is None
        )
    finally:
        sched.shutdown()


def test_documents_per_environment_and_real_429s(
    make: Any, redis_client: redis.Redis, keys: Keys
) -> None:
    leader, standby = make("host-a:1:aaa"), make("host-b:2:bbb")
    assert leader.tick_leadership() and not standby.tick_leadership()
    redis_client.hset(
        keys.pool_stats,
        mapping={"completed:index": 5, "completed:dev:index": 5, "failed:dev:acte": 2},
    )
    # 3 answers with 429 but one shared cooldown: the gauge counts the answers.
    redis_client.hset(keys.stats, mapping={"responses_429": 3, "cooldowns": 1})
    standby.print_status()  # a standby prints nothing but refreshes its gauges
    leader.metrics.observe(leader.snapshot(), leader.limiter)
    for sched in (leader, standby):
        assert (
            value(
                sched, "ocr_documents_total", environment="dev", type="index", outcome="completed"
            )
            == 5
        )
        assert (
            value(sched, "ocr_documents_total", environment="dev", type="acte", outcome="failed")
            == 2
        )
        assert value(sched, "ocr_gemini_429_total") == 3
        assert value(sched, "ocr_gemini_cooldowns_total") == 1
        taken = value(sched, "ocr_status_snapshot_timestamp_seconds")
        assert taken is not None and abs(taken - time.time()) < 60


def test_circuit_breaker_state_gauge_when_present(make: Any) -> None:
    sched = make("host-a:1:aaa")
    snap = sched.snapshot()
    snap.circuit_breakers = {"gemini": "open", "env:prod": {"state": "half_open"}}
    sched.metrics.observe(snap, sched.limiter)
    assert value(sched, "ocr_circuit_breaker_state", breaker="gemini") == 2
    assert value(sched, "ocr_circuit_breaker_state", breaker="env:prod") == 1
