"""Messages between the scheduler and the actors: one Dramatiq queue per document type.

The scheduler enqueues a message per claimed document without importing the
actors (it builds `dramatiq.Message`s by name), and remembers it in a per-type
"enqueued" zset so the next feed does not over-fill: a message counts against
its type's free slots until an actor picks it up (or, if it was lost, until its
lease would have lapsed anyway).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer

from control_plane.config import DOCUMENT_TYPES
from control_plane.keys import Keys, dramatiq_queue_keys
from control_plane.scripts import ScriptSet

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


class InHand:
    """Messages one worker process holds (fetched and not yet acked), over all its queues.

    No hoarding (issue 10): a process fetches a message only for an idle worker thread.
    Dramatiq's default lets each queue's consumer hold 2 x threads messages, so a busy
    process kept messages in its buffer while another process sat idle. Here the
    consumers of both queues share one budget, the process's worker threads: every
    message a process holds has a thread to run it (or is running), and the rest wait on
    the Redis queue where any idle process takes them. A draining process (SIGTERM)
    fetches nothing more.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.capacity: int | None = None  # worker threads; None until the worker boots
        self.consumers: list[_RedisConsumer] = []

    def room(self, consumer: _RedisConsumer) -> int:
        """Messages `consumer` may fetch now (call with `lock` held): up to its prefetch,
        and never more than the process's idle threads."""
        own = int(consumer.prefetch) - int(consumer.outstanding_message_count)
        if self.capacity is None:  # not a worker process (no worker_boot): Dramatiq's rule
            return max(0, own)
        held = sum(int(c.outstanding_message_count) for c in self.consumers)
        return max(0, min(own, self.capacity - held))


class _OcrConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, fetching only for the process's idle threads (InHand)."""

    def __init__(self, broker: OcrRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._hand = broker.in_hand
        with self._hand.lock:
            self._hand.consumers.append(self)

    def close(self) -> None:
        with self._hand.lock:
            if self in self._hand.consumers:
                self._hand.consumers.remove(self)
        super().close()

    def __next__(self) -> Any:
        if not self.message_cache:
            with self._hand.lock:
                room = self._hand.room(self)
                if room > 0:
                    try:
                        self.message_cache = list(self.broker.do_fetch(self.queue_name, room))
                    except redis.ConnectionError as exc:
                        raise dramatiq.errors.ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
            if not self.message_cache:
                time.sleep(self.timeout / 1000)
                return None
        return super().__next__()  # type: ignore[no-untyped-call]


class OcrRedisBroker(RedisBroker):
    """Dramatiq's Redis broker with a short idle poll (see CONSUMER_IDLE_POLL_MS) and
    consumers that fetch only for idle worker threads (see InHand)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.in_hand = InHand()

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if signal == "worker_boot" and args:
            self.in_hand.capacity = max(1, int(getattr(args[0], "worker_threads", 1)))
        elif signal == "worker_shutdown":
            # Draining: no thread will take a new message (Dramatiq keeps the consumers
            # running until the threads are joined); fetch nothing, so new messages wait
            # on the queue for another process instead of in this one's work queue.
            with self.in_hand.lock:
                self.in_hand.capacity = 0
        super().emit_before(signal, *args, **kwargs)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return _OcrConsumer(self, queue_name, prefetch, min(timeout, CONSUMER_IDLE_POLL_MS))


def make_broker(redis_url: str, namespace: str) -> RedisBroker:
    """The Redis broker both processes share; queues declared up front."""
    broker = OcrRedisBroker(url=redis_url, namespace=namespace)
    for queue in QUEUE_NAMES.values():
        broker.declare_queue(queue)
    return broker


def dramatiq_message(message: DocumentMessage) -> dramatiq.Message[Any]:
    """The Dramatiq message of a document, as its broker would enqueue it."""
    source = message.document_source
    return dramatiq.Message(
        queue_name=QUEUE_NAMES[source],
        actor_name=ACTOR_NAMES[source],
        args=(message.to_json(),),
        kwargs={},
        options={"redis_message_id": str(uuid.uuid4())},
    )


class FencedEnqueuer:
    """The feed's enqueue: message on the queue + entry in the enqueued set, in one script
    (feed_enqueue.lua), only while `owner` holds the leader lock under `epoch`."""

    def __init__(self, client: redis.Redis, keys: Keys, namespace: str) -> None:
        self._keys = keys
        self._namespace = namespace
        self._scripts = ScriptSet(client)

    def enqueue(self, message: DocumentMessage, owner: str, epoch: int) -> bool:
        """True = on the queue and counted; False = fenced (not the leader), nothing written."""
        msg = dramatiq_message(message)
        queue, msgs = dramatiq_queue_keys(self._namespace, msg.queue_name)
        done = self._scripts.run(
            "feed_enqueue",
            [
                self._keys.leader,
                self._keys.leader_epoch,
                self._keys.enqueued(message.document_source),
                queue,
                msgs,
            ],
            [owner, str(epoch), message.ref, msg.options["redis_message_id"], msg.encode()],
        )
        return int(done) == 1


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
