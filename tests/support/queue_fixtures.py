"""Fixtures for the queue tests: a schema'd database, and a store of each transport.

Import the fixtures into a test module (`from tests.support.queue_fixtures import *`-style
explicit imports); `store` is parametrized over `postgres` and `supabase`, the latter
being the real supabase-py client against `supabase_endpoint`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from control_plane.queue.migrate import apply_schema
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.store import QueueStore
from control_plane.queue.supabase import SupabaseStore
from tests.support.supabase_endpoint import SupabaseEndpoint, supabase_endpoint

TRANSPORTS = ["postgres", "supabase"]


def sql(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement directly (test set-up and inspection); rows if any."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def add_ready(dsn: str, count: int, source: str = "index", prefix: str = "doc") -> None:
    """Insert ready rows the way producers do: only document_source, storage_path, status."""
    sql(
        dsn,
        "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
        " SELECT %s, %s || '/' || g || '.pdf', 3 FROM generate_series(1, %s) g",
        (source, prefix, count),
    )


def expire_leases(dsn: str) -> None:
    """Make every current lease expired, without waiting on the clock."""
    sql(
        dsn,
        "UPDATE extraction_queue SET lease_expires_at = now() - interval '1 second'"
        " WHERE status_id = 2",
    )


@dataclass
class StoreCase:
    """A store under test, its database, and the endpoint when it is the Supabase one."""

    transport: str
    store: QueueStore
    dsn: str
    endpoint: SupabaseEndpoint | None

    def spec(self) -> dict[str, str]:
        if self.endpoint is None:
            return {"transport": "postgres", "dsn": self.dsn}
        return {"transport": "supabase", "url": self.endpoint.url, "key": self.endpoint.service_key}


@pytest.fixture(scope="module")
def queue_dsn(pg_database_factory: Any) -> str:
    """One database with the schema for the module; tables emptied before each test."""
    dsn: str = pg_database_factory("queue")
    apply_schema(dsn)
    return dsn


@pytest.fixture(params=TRANSPORTS)
def store_case(request: pytest.FixtureRequest, queue_dsn: str) -> Iterator[StoreCase]:
    sql(queue_dsn, "TRUNCATE extraction_queue RESTART IDENTITY")
    if request.param == "postgres":
        store: QueueStore = PostgresStore("dev", queue_dsn, max_size=16)
        try:
            yield StoreCase("postgres", store, queue_dsn, None)
        finally:
            store.close()
        return
    with supabase_endpoint(queue_dsn) as endpoint:
        store = SupabaseStore("dev", endpoint.url, endpoint.service_key)
        try:
            yield StoreCase("supabase", store, queue_dsn, endpoint)
        finally:
            store.close()
