"""Claim loops shared by the concurrency tests; importable from spawned processes."""

from __future__ import annotations

from typing import Any

from control_plane.errors import TransientError
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.store import QueueStore
from control_plane.queue.supabase import SupabaseStore


def open_store(spec: dict[str, str]) -> QueueStore:
    """A store from a picklable description: {"transport", "dsn"} or {"url", "key"}."""
    if spec["transport"] == "postgres":
        return PostgresStore("dev", spec["dsn"], max_size=2)
    return SupabaseStore("dev", spec["url"], spec["key"])


def claim_until_empty(store: QueueStore, worker_id: str, batch: int) -> list[int]:
    """Claim batches until the queue answers empty; the ids this worker got."""
    got: list[int] = []
    while True:
        try:
            docs = store.claim("index", batch, worker_id, 600_000)
        except TransientError:
            continue
        if not docs:
            return got
        got.extend(d.id for d in docs)


def process_claimer(
    spec: dict[str, str], worker_id: str, batch: int, ready: Any, start: Any, results: Any
) -> None:
    """Process entry point: say ready, wait for the start signal, claim, report the ids."""
    store = open_store(spec)
    try:
        store.counts()  # connect before the race starts
        ready.put(worker_id)
        start.wait(60)
        results.put((worker_id, claim_until_empty(store, worker_id, batch)))
    finally:
        store.close()
