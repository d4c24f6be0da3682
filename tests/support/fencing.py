"""Helpers for the issue-10 tests: messages sent by hand, worker pids, allocations."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import redis

from control_plane.config import load_settings
from control_plane.dispatch import DocumentMessage, enqueue_document, make_broker
from control_plane.keys import Keys
from control_plane.pool import WorkerPool
from control_plane.queue.postgres import PostgresStore
from tests.support.pool import PoolHarness


def publish_allocation(pool: PoolHarness, allocation: dict[str, int]) -> None:
    """Publish slots without a scheduler (tests that send messages by hand)."""
    settings = load_settings(dev_database_url=pool.dsn, redis_url=pool.redis_url)
    client = redis.Redis.from_url(pool.redis_url, decode_responses=True)
    try:
        WorkerPool.from_settings(client, settings, Keys(prefix=pool.prefix)).publish_allocation(
            allocation, version=1, reason="test"
        )
    finally:
        client.close()


def claim_messages(pool: PoolHarness, source: str, count: int) -> list[DocumentMessage]:
    """Claim `count` ready documents as a scheduler would, as messages (not enqueued)."""
    store = PostgresStore("dev", pool.dsn)
    try:
        docs = store.claim(source, count, "test-feeder", 600_000)
    finally:
        store.close()
    return [
        DocumentMessage(d.environment, d.id, d.document_source, d.storage_path, d.lease_token, 0)
        for d in docs
    ]


def send(pool: PoolHarness, *messages: DocumentMessage) -> None:
    """Put messages on their Dramatiq queues (the same message twice = two deliveries)."""
    broker = make_broker(pool.redis_url, pool.namespace)
    try:
        for message in messages:
            enqueue_document(broker, message)
    finally:
        broker.close()


def pid_of(worker_id: str) -> int:
    """The process id in a worker id `host-pid-tN` (the host may hold dashes)."""
    return int(worker_id.rsplit("-", 2)[1])


def row(dsn: str, doc_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT status_id, attempts, worker_id, started_at, error_message, lost_deliveries,"
            " claim_epoch, completed_at FROM extraction_queue WHERE id = %s",
            (doc_id,),
        )
        names = [d.name for d in cur.description or []]
        found = cur.fetchone()
    assert found is not None
    return dict(zip(names, found, strict=True))


def allocation(client: redis.Redis, prefix: str) -> dict[str, Any]:
    raw = client.get(f"{prefix}worker_pool:allocation")
    return {} if raw is None else dict(json.loads(raw))
