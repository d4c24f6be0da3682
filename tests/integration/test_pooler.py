"""The queue through a transaction-mode pooler (PgBouncer 1.18, pool_mode=transaction).

Two server connections behind many client connections: a client's consecutive
transactions land on different server connections, as on Supabase's port 6543. The
store must keep no session state and make no server-side prepared statements there.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from control_plane.queue.migrate import apply_schema
from control_plane.queue.postgres import PostgresStore
from tests.support.pgbouncer import pgbouncer
from tests.support.queue_fixtures import add_ready, sql

pytestmark = pytest.mark.integration


def through(port: int, dsn: str, *, mode: str | None) -> str:
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    query = f"?pool_mode={mode}" if mode else ""
    return f"postgresql://postgres@127.0.0.1:{port}/{dbname}{query}"


def run_pool_cycles(store: PostgresStore, docs_per_thread: int, threads: int) -> list[str]:
    errors: list[str] = []

    def work() -> None:
        try:
            for _ in range(docs_per_thread):
                for doc in store.claim("index", 1, "w", 60_000):
                    delivery = store.start(doc.id, doc.lease_token, "w", 60_000, 3)
                    assert delivery is not None
                    assert store.renew(doc.id, delivery.lease_token, 60_000)
                    assert store.complete(doc.id, delivery.lease_token, "t", 1, 1)
                store.counts()
        except Exception as exc:  # collected for the assertion
            errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def test_the_store_works_through_a_transaction_mode_pooler(pg_database_factory: Any) -> None:
    dsn = pg_database_factory("pgbouncer")
    apply_schema(dsn)
    add_ready(dsn, 120)
    with pgbouncer() as port:
        store = PostgresStore("dev", through(port, dsn, mode="transaction"), max_size=8)
        try:
            assert store.transaction_pooler
            # 120 documents x 5 statements each, far past psycopg's prepare threshold (5).
            assert run_pool_cycles(store, 15, 8) == []
        finally:
            store.close()
    assert sql(dsn, "SELECT count(*) FROM extraction_queue WHERE status_id = 5") == [(120,)]


def test_control_the_same_load_without_pooler_mode_breaks(pg_database_factory: Any) -> None:
    """Shows the test above can fail: as a direct connection, prepared statements break."""
    dsn = pg_database_factory("pgbouncer_control")
    apply_schema(dsn)
    add_ready(dsn, 120)
    with pgbouncer() as port:
        store = PostgresStore("dev", through(port, dsn, mode=None), max_size=8)
        try:
            assert not store.transaction_pooler
            errors = run_pool_cycles(store, 15, 8)
        finally:
            store.close()
    assert any("prepared statement" in e for e in errors), errors[:3]


def test_migrate_refuses_a_transaction_pooler_with_a_clear_message(
    pg_database_factory: Any,
) -> None:
    from control_plane.errors import PermanentError

    dsn = pg_database_factory("pgb_migrate")
    with pytest.raises(PermanentError, match="migrations need a session"):
        apply_schema("postgresql://postgres@db.example.supabase.co:6543/postgres")
    with pytest.raises(PermanentError, match="transaction-mode pooler"):
        apply_schema(through(5432, dsn, mode="transaction"))
