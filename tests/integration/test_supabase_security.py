"""Table security on a Supabase-like PostgreSQL (issue 12).

A private cluster gets Supabase's roles and default privileges (tests/support/
supabase_roles.py documents exactly what is created). As `anon` and `authenticated`
(what the public anon key and a user's JWT reach through the REST API) nothing of the
queue can be read, written or called; as `service_role` the pool works, through both
transports. On a table that existed before, `migrate` changes nothing of the owner's
choices and prints the statements that close it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors

from control_plane.queue.migrate import apply_schema
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.security import check_security
from control_plane.queue.store import QueueStore
from control_plane.queue.supabase import SupabaseStore
from tests.support.pg_server import PrivatePostgres, private_postgres
from tests.support.queue_fixtures import add_ready
from tests.support.supabase_endpoint import supabase_endpoint
from tests.support.supabase_roles import (
    API_ROLES,
    as_role,
    create_supabase_roles,
    prepare_supabase_database,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# What an API role might try: read, write, forge a result, call the functions.
ATTEMPTS = {
    "read": "SELECT id, storage_path, file_content FROM extraction_queue",
    "insert": "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
    " VALUES ('index', 'http://evil/x.pdf', 3)",
    "forge": "UPDATE extraction_queue SET status_id = 5, file_content = 'forged'",
    "repoint": "UPDATE extraction_queue SET storage_path = 'http://evil/'",
    "delete": "DELETE FROM extraction_queue",
    "statuses": "SELECT * FROM ocr_status",
    "migrations": "SELECT * FROM ocr_schema_migrations",
    "claim": "SELECT * FROM ocr_claim('index', 10, 'anon', 600000)",
    "complete": "SELECT ocr_complete(1, gen_random_uuid(), 'forged', 1, 1)",
    "counts": "SELECT * FROM ocr_counts()",
    "reap": "SELECT * FROM ocr_reap(3)",
    # Attack (a2): the leader fence is a table in `public` too. Open, one PATCH through
    # the REST API with the public anon key fenced every scheduler out for good.
    "fence_read": "SELECT * FROM ocr_leader_fence",
    "fence_forge": "UPDATE ocr_leader_fence SET epoch = 9223372036854775807",
    "fence_call": "SELECT ocr_leader_fence(9223372036854775807, 'anon')",
    "error_history": "SELECT * FROM ocr_error_history",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        create_supabase_roles(server.dsn())
        yield server


def supabase_database(cluster: PrivatePostgres, name: str) -> str:
    dsn = cluster.create_database(name)
    prepare_supabase_database(dsn)
    return dsn


def service_dsn(cluster: PrivatePostgres, dsn: str) -> str:
    return f"postgresql://service_role@127.0.0.1:{cluster.port}/{dsn.rsplit('/', 1)[1]}"


def refused(dsn: str, role: str) -> dict[str, str]:
    """Each attempt as `role` -> 'refused' or what it got."""
    out: dict[str, str] = {}
    for what, statement in ATTEMPTS.items():
        with as_role(dsn, role) as conn:
            try:
                cur = conn.execute(statement.encode())
                rows = cur.fetchall() if cur.description else []
                out[what] = f"ALLOWED ({cur.rowcount} rows, {rows[:1]})"
            except pg_errors.InsufficientPrivilege:
                out[what] = "refused"
    return out


def pool_cycle(store: QueueStore) -> None:
    docs = store.claim("index", 5, "w1", 60_000)
    assert len(docs) == 2
    tokens = []
    for doc in docs:
        delivery = store.start(doc.id, doc.lease_token, "w1", 60_000, 3)
        assert delivery is not None
        assert store.renew(doc.id, delivery.lease_token, 60_000)
        tokens.append(delivery.lease_token)
    assert store.complete(docs[0].id, tokens[0], "text", 10, 2)
    assert str(store.fail(docs[1].id, tokens[1], "bad", permanent=True, max_attempts=3)) == "error"
    assert store.counts()["index"].ready == 0
    store.reap(3)


def test_created_tables_are_closed_to_anon_and_authenticated(cluster: PrivatePostgres) -> None:
    dsn = supabase_database(cluster, "fresh")
    apply_schema(dsn)
    add_ready(dsn, 2)
    for role in API_ROLES:
        assert refused(dsn, role) == dict.fromkeys(ATTEMPTS, "refused"), role
    assert check_security(dsn) == []
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT relname FROM pg_class WHERE relname IN"
            " ('extraction_queue', 'ocr_status', 'ocr_schema_migrations') AND relrowsecurity"
            " ORDER BY 1"
        ).fetchall() == [("extraction_queue",), ("ocr_schema_migrations",), ("ocr_status",)]
    # The document rows are untouched by all those attempts.
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM extraction_queue WHERE status_id = 3 AND file_content IS NULL"
        ).fetchone() == (2,)


@pytest.mark.parametrize("transport", ["postgres", "supabase"])
def test_the_pool_works_as_service_role(cluster: PrivatePostgres, transport: str) -> None:
    dsn = supabase_database(cluster, f"service_{transport}")
    apply_schema(dsn)
    add_ready(dsn, 2)
    service = service_dsn(cluster, dsn)
    if transport == "postgres":
        store: QueueStore = PostgresStore("dev", service)
        try:
            pool_cycle(store)
        finally:
            store.close()
        return
    with supabase_endpoint(service) as endpoint:
        store = SupabaseStore("dev", endpoint.url, endpoint.service_key)
        try:
            pool_cycle(store)
        finally:
            store.close()


def test_an_existing_open_table_is_left_to_its_owner_and_migrate_says_what_to_run(
    cluster: PrivatePostgres,
) -> None:
    dsn = supabase_database(cluster, "existing")
    with psycopg.connect(dsn, autocommit=True) as conn:  # created by another component
        conn.execute(
            b"CREATE TABLE extraction_queue (id bigint GENERATED BY DEFAULT AS IDENTITY"
            b" PRIMARY KEY, document_source text NOT NULL, storage_path text NOT NULL,"
            b" status_id smallint NOT NULL DEFAULT 1)"
        )
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.endswith(("_DATABASE_URL", "_SUPABASE_URL", "_SUPABASE_SERVICE_KEY"))
        },
        "DEV_DATABASE_URL": dsn,
        "OCR_SCHEDULER_METRICS_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "scheduler.py", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        "ALTER TABLE public.extraction_queue ENABLE ROW LEVEL SECURITY;",
        "REVOKE ALL ON TABLE public.extraction_queue FROM PUBLIC, anon, authenticated;",
        "REVOKE ALL ON SEQUENCE public.extraction_queue_id_seq FROM PUBLIC, anon, authenticated;",
    ]
    assert check_security(dsn) == expected
    for stmt in expected:
        assert stmt in result.stderr, result.stderr
    assert "WARNING: dev: the queue tables are open" in result.stderr
    # Nothing of the owner's choices changed: still readable by anon (that is the warning).
    assert refused(dsn, "anon")["read"].startswith("ALLOWED")
    # The created side tables (ocr_status, ocr_schema_migrations) are closed all the same.
    assert refused(dsn, "anon")["statuses"] == "refused"
    # The functions are service-role only even so.
    assert refused(dsn, "anon")["claim"] == "refused"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in expected:
            conn.execute(stmt.encode())
    assert check_security(dsn) == []
    for role in API_ROLES:
        assert refused(dsn, role) == dict.fromkeys(ATTEMPTS, "refused"), role
