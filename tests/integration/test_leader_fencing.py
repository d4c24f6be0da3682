"""Issue 10 in-process, on real Redis and PostgreSQL: the leader lease and epoch, the
fenced publish and enqueue scripts, and a feed that fails in the middle of a batch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from dramatiq import Message

from control_plane.config import load_settings
from control_plane.dispatch import DocumentMessage, FencedEnqueuer
from control_plane.keys import Keys, dramatiq_queue_keys
from control_plane.pool import WorkerPool
from control_plane.queue.environments import Environments
from control_plane.queue.migrate import apply_schema
from control_plane.scheduler.leader import LeaderLock, lease_deadline
from control_plane.scheduler.service import Scheduler

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn(pg_database_factory) -> str:  # type: ignore[no-untyped-def]
    dsn = pg_database_factory("fencing")
    apply_schema(dsn)
    return dsn  # type: ignore[no-any-return]


@pytest.fixture
def scheduler(dsn: str, redis_url: str, redis_client: redis.Redis, keys: Keys) -> Iterator[Any]:
    settings = load_settings(
        dev_database_url=dsn,
        redis_url=redis_url,
        ocr_redis_prefix=keys.prefix,
        ocr_dramatiq_namespace=keys.prefix.rstrip(":"),
        ocr_worker_pool_size=4,
        ocr_feed_lookahead=4,
    )
    sched = Scheduler(settings, redis_client, keys, Environments.from_settings(settings))
    assert sched.tick_leadership()
    yield sched
    sched.shutdown()
    for key in redis_client.scan_iter(match=f"{keys.prefix.rstrip(':')}:*"):
        redis_client.delete(key)


def seed(dsn: str, index: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(index):
            conn.execute(
                "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
                "VALUES ('index', %s, 3)",
                (f"b/{n}.pdf",),
            )


def statuses(dsn: str) -> dict[int, tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, status_id, attempts FROM extraction_queue").fetchall()
    return {int(i): (int(s), int(a)) for i, s, a in rows}


@pytest.mark.parametrize(
    ("started", "ttl", "margin", "expected"),
    [(100.0, 10_000, 3_000, 107.0), (5.0, 1_000, 3_000, 5.0), (0.0, 600, 0, 0.6)],
)
def test_lease_deadline(started: float, ttl: int, margin: int, expected: float) -> None:
    assert lease_deadline(started, ttl, margin) == pytest.approx(expected)


def test_a_leader_stops_acting_before_its_lock_can_lapse(
    redis_client: redis.Redis, keys: Keys
) -> None:
    lock = LeaderLock(redis_client, keys, "a", ttl_ms=800, margin_ms=400)
    assert lock.try_acquire() and lock.acting()
    remaining_ms = redis_client.pttl(keys.leader)
    assert lock.valid_until - time.monotonic() < remaining_ms / 1000
    time.sleep(0.45)  # past the local deadline, the lock itself still held
    assert lock.is_leader and not lock.acting()
    assert redis_client.get(keys.leader) == "a"
    assert lock.try_acquire() and lock.acting(), "a renewal extends the deadline"


def test_the_epoch_never_goes_backwards_after_a_flush(
    redis_client: redis.Redis, keys: Keys
) -> None:
    a = LeaderLock(redis_client, keys, "a")
    assert a.try_acquire()
    first = a.epoch
    sec, _ = redis_client.time()
    assert first >= int(sec) * 1000, "the epoch carries the Redis clock (ms)"
    a.release()
    b = LeaderLock(redis_client, keys, "b")
    assert b.try_acquire() and b.epoch > first, "a takeover in the same ms still counts up"
    redis_client.delete(keys.leader, keys.leader_epoch)  # a flush of our keys
    c = LeaderLock(redis_client, keys, "c")
    assert c.try_acquire() and c.epoch >= first  # the clock part
    redis_client.delete(keys.leader, keys.leader_epoch)
    d = LeaderLock(redis_client, keys, "d")
    d.min_epoch = 10**13  # a database fence saw a higher epoch
    assert d.try_acquire() and d.epoch == 10**13


def test_a_stale_epoch_can_neither_publish_nor_block_the_real_leader(
    redis_client: redis.Redis, keys: Keys
) -> None:
    pool = WorkerPool(
        redis_client,
        keys,
        pool_size=4,
        costs={"index": (1.0, 1.0), "acte": (1.0, 1.0)},
        cpu_budget=8,
        ram_budget=8,
    )
    real = LeaderLock(redis_client, keys, "real")
    assert real.try_acquire()
    # A stale leader with a far higher in-memory epoch (Redis was flushed under it).
    stale_epoch = real.epoch + 1000
    assert not pool.publish_allocation(
        {"index": 3, "acte": 1},
        version=stale_epoch * 1000,
        reason="stale",
        fence=("stale", stale_epoch),
    )
    assert pool.read_allocation() is None
    # A plan left by another epoch (even with a higher version) never blocks the leader.
    assert pool.publish_allocation({"index": 3, "acte": 1}, version=2**52, reason="old")
    assert pool.publish_allocation(
        {"index": 1, "acte": 3},
        version=real.epoch * 1000 + 1,
        reason="real",
        fence=("real", real.epoch),
    )
    plan = pool.read_allocation()
    assert plan is not None and (plan["index"], plan["epoch"], plan["leader"]) == (
        1,
        real.epoch,
        "real",
    )
    # Within one epoch, versions still order the leader's own publishes.
    assert not pool.publish_allocation(
        {"index": 2, "acte": 2},
        version=real.epoch * 1000,
        reason="older",
        fence=("real", real.epoch),
    )


def test_the_fenced_enqueue_writes_both_or_nothing(redis_client: redis.Redis, keys: Keys) -> None:
    namespace = keys.prefix.rstrip(":")
    enqueuer = FencedEnqueuer(redis_client, keys, namespace)
    lock = LeaderLock(redis_client, keys, "leader")
    assert lock.try_acquire()
    message = DocumentMessage("dev", 7, "index", "b/7.pdf", "token-7", 0)
    queue, msgs = dramatiq_queue_keys(namespace, "ocr-index")
    try:
        assert not enqueuer.enqueue(message, "someone-else", lock.epoch)
        assert not enqueuer.enqueue(message, "leader", lock.epoch - 1)
        assert redis_client.llen(queue) == 0 and redis_client.zcard(keys.enqueued("index")) == 0
        assert enqueuer.enqueue(message, "leader", lock.epoch)
        (message_id,) = redis_client.lrange(queue, 0, -1)
        decoded = Message.decode(redis_client.hget(msgs, message_id).encode())
        assert decoded.actor_name == "ocr_index" and decoded.queue_name == "ocr-index"
        assert DocumentMessage.from_json(decoded.args[0]) == message
        assert decoded.options["redis_message_id"] == message_id
        assert redis_client.zrange(keys.enqueued("index"), 0, -1) == ["dev/7"]
        redis_client.delete(msgs)
        redis_client.set(msgs, "broken")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            enqueuer.enqueue(DocumentMessage("dev", 8, "index", "b", "t", 0), "leader", lock.epoch)
        assert redis_client.llen(queue) == 1 and redis_client.zcard(keys.enqueued("index")) == 1
    finally:
        redis_client.delete(queue, msgs)


@pytest.mark.parametrize("fail_after", [0, 2, 5])
def test_a_feed_failing_mid_batch_gives_back_every_document_not_enqueued(
    scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys, fail_after: int
) -> None:
    seed(dsn, index=6)
    sent: list[str] = []
    enqueue = scheduler.enqueuer.enqueue

    def flaky(message: DocumentMessage, owner: str, epoch: int) -> bool:
        if len(sent) >= fail_after:
            raise redis.ConnectionError("injected: Redis went away mid-batch")
        sent.append(message.ref)
        return bool(enqueue(message, owner, epoch))

    scheduler.enqueuer.enqueue = flaky
    result = scheduler.feed()
    assert result is not None and result.wanted["index"] == 6, result
    assert result.claimed["index"] == fail_after
    rows = statuses(dsn)
    on_queue = {ref for ref in sent}
    assert {f"dev/{i}" for i, (s, _) in rows.items() if s == 2} == on_queue
    assert all(s == 3 and a == 0 for i, (s, a) in rows.items() if f"dev/{i}" not in on_queue)
    # The enqueued set is exactly the messages on the queue.
    queue, msgs = dramatiq_queue_keys(keys.prefix.rstrip(":"), "ocr-index")
    refs = {
        DocumentMessage.from_json(json.loads(redis_client.hget(msgs, mid))["args"][0]).ref
        for mid in redis_client.lrange(queue, 0, -1)
    }
    assert refs == on_queue == set(redis_client.zrange(keys.enqueued("index"), 0, -1))


def set_fence(dsn: str, epoch: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ocr_leader_fence SET epoch = %s", (epoch,))


def test_a_leader_behind_a_database_fence_steps_down_and_comes_back_above_it(
    scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """Redis lost its state and its clock is behind: the database knows a higher epoch."""
    high = scheduler.leader.epoch + 10**9
    set_fence(dsn, high)
    seed(dsn, index=3)
    # A feed under the old epoch is refused by the database: nothing claimed, lock given up.
    result = scheduler.feed()
    assert result is not None and result.claimed == {"index": 0, "acte": 0}
    assert {s for s, _ in statuses(dsn).values()} == {3}
    assert not scheduler.leader.is_leader and redis_client.get(keys.leader) is None
    # Re-acquired: the take-over learns the fence, steps down, and the next epoch is above it.
    scheduler.tick_leadership()
    assert scheduler.tick_leadership() and scheduler.leader.acting()
    assert scheduler.leader.epoch > high
    result = scheduler.feed()
    assert result is not None and result.claimed["index"] == 3
