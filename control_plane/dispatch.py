"""Messages between the scheduler and the actors: one Dramatiq queue per document type.

The scheduler enqueues a message per claimed document without importing the
actors (it builds `dramatiq.Message`s by name), and remembers it in a per-type
"enqueued" zset so the next feed does not over-fill: a message counts against
its type's free slots until an actor picks it up (or, if it was lost, until its
lease would have lapsed anyway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from control_plane.config import DOCUMENT_TYPES
from control_plane.keys import Keys

ACTOR_NAMES = {"index": "ocr_index", "acte": "ocr_acte"}
QUEUE_NAMES = {"index": "ocr-index", "acte": "ocr-acte"}


@dataclass(frozen=True)
class DocumentMessage:
    """What an actor needs to process one claimed document."""

    environment: str
    id: int
    document_source: str
    storage_path: str
    lease_token: str
    attempts: int

    @property
    def ref(self) -> str:
        """`env/id`: how logs, the worker registry and the enqueued set name a document."""
        return f"{self.environment}/{self.id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DocumentMessage:
        return cls(
            environment=str(data["environment"]),
            id=int(data["id"]),
            document_source=str(data["document_source"]),
            storage_path=str(data["storage_path"]),
            lease_token=str(data["lease_token"]),
            attempts=int(data.get("attempts", 0)),
        )


# Longest sleep of an idle consumer between two fetches. Dramatiq backs off up to its
# worker timeout (1 s); the feed sends only the messages free slots need, so queues are
# usually empty and that back-off was paid on nearly every document.
CONSUMER_IDLE_POLL_MS = 100


class OcrRedisBroker(RedisBroker):
    """Dramatiq's Redis broker with a short idle poll (see CONSUMER_IDLE_POLL_MS)."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return super().consume(queue_name, prefetch, min(timeout, CONSUMER_IDLE_POLL_MS))


def make_broker(redis_url: str, namespace: str) -> RedisBroker:
    """The Redis broker both processes share; queues declared up front."""
    broker = OcrRedisBroker(url=redis_url, namespace=namespace)  # type: ignore[no-untyped-call]
    for queue in QUEUE_NAMES.values():
        broker.declare_queue(queue)
    return broker


def enqueue_document(broker: dramatiq.Broker, message: DocumentMessage) -> None:
    """Put one document on its type's queue (no actor import needed)."""
    source = message.document_source
    broker.enqueue(
        dramatiq.Message(
            queue_name=QUEUE_NAMES[source],
            actor_name=ACTOR_NAMES[source],
            args=(message.to_json(),),
            kwargs={},
            options={},
        )
    )


class EnqueuedSet:
    """Per-type zset of documents enqueued but not yet picked up (score: Redis-time ms)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    def add(self, document_source: str, refs: list[str], now_ms: int) -> None:
        if refs:
            self._client.zadd(self._keys.enqueued(document_source), {r: now_ms for r in refs})

    def remove(self, document_source: str, ref: str) -> None:
        self._client.zrem(self._keys.enqueued(document_source), ref)

    def counts(self) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for source in DOCUMENT_TYPES:
            pipe.zcard(self._keys.enqueued(source))
        return dict(zip(DOCUMENT_TYPES, (int(n) for n in pipe.execute()), strict=True))

    def prune(self, older_than_ms: int) -> int:
        """Forget entries enqueued before `older_than_ms` (their lease has lapsed by now)."""
        removed = 0
        for source in DOCUMENT_TYPES:
            removed += int(
                self._client.zremrangebyscore(self._keys.enqueued(source), "-inf", older_than_ms)
            )
        return removed
