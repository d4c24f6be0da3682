"""The database stopped and restarted in the middle of claims (a private PG cluster).

While it is down calls raise TransientError; afterwards the same store works again,
and every document ends completed exactly once. Run on both transports.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from control_plane.errors import TransientError
from control_plane.queue.migrate import apply_schema
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.store import QueueStore
from control_plane.queue.supabase import SupabaseStore
from tests.support.pg_server import PrivatePostgres, private_postgres
from tests.support.queue_fixtures import add_ready, sql
from tests.support.supabase_endpoint import supabase_endpoint

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DOCUMENTS = 300
LEASE_MS = 3_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def _worker(
    store: QueueStore,
    name: str,
    stop: threading.Event,
    claimed: list[int],
    completed: list[int],
    errors: Counter[str],
) -> None:
    while not stop.is_set():
        try:
            docs = store.claim("index", 5, name, LEASE_MS)
        except TransientError:
            errors["claim"] += 1
            time.sleep(0.05)
            continue
        claimed.extend(d.id for d in docs)
        for doc in docs:
            while not stop.is_set():
                try:
                    if store.complete(doc.id, doc.lease_token, f"text {doc.id}", 1, 1):
                        completed.append(doc.id)
                    break
                except TransientError:
                    errors["complete"] += 1
                    time.sleep(0.05)
        if not docs:
            try:
                store.reap(3)  # lost replies leave orphaned leases: bring them back
            except TransientError:
                errors["reap"] += 1
            time.sleep(0.1)


@pytest.mark.parametrize("transport", ["postgres", "supabase"])
def test_store_recovers_after_a_restart_and_loses_nothing(
    cluster: PrivatePostgres, transport: str
) -> None:
    dsn = cluster.create_database(f"outage_{transport}")
    apply_schema(dsn)
    add_ready(dsn, DOCUMENTS)
    with supabase_endpoint(dsn) as endpoint:
        store: QueueStore = (
            PostgresStore("dev", dsn, pool_timeout_s=1, connect_timeout_s=1)
            if transport == "postgres"
            else SupabaseStore("dev", endpoint.url, endpoint.service_key, timeout_s=5)
        )
        stop = threading.Event()
        claimed: list[int] = []
        completed: list[int] = []
        errors: Counter[str] = Counter()
        threads = [
            threading.Thread(
                target=_worker, args=(store, f"w{i}", stop, claimed, completed, errors)
            )
            for i in range(4)
        ]
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(completed) < DOCUMENTS // 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            cluster.stop("fast")
            outage_ends = time.monotonic() + 1.5
            while time.monotonic() < outage_ends:
                time.sleep(0.05)
            with pytest.raises(TransientError):
                store.counts()
            assert len(completed) < DOCUMENTS, "the outage hit in the middle of the work"
            cluster.start()
            deadline = time.monotonic() + 40
            while len(set(completed)) < DOCUMENTS and time.monotonic() < deadline:
                done = sql(dsn, "SELECT count(*) FROM extraction_queue WHERE status_id = 5")
                if done[0][0] == DOCUMENTS:
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(20)
            store.close()

    assert errors["claim"] + errors["complete"] + errors["reap"] > 0, "calls failed while down"
    assert sql(dsn, "SELECT status_id, count(*) FROM extraction_queue GROUP BY 1") == [
        (5, DOCUMENTS)
    ], "every document completed after the restart"
    twice = [doc for doc, n in Counter(completed).items() if n > 1]
    assert twice == [], "no document completed twice"
    assert [doc for doc, n in Counter(claimed).items() if n > 1] == [], (
        "no document handed out twice (leases outlived the outage)"
    )
    # a complete whose reply was lost while the server went down is the only gap allowed
    assert len(completed) >= DOCUMENTS - errors["complete"]


def test_grants_limit_the_functions_to_the_service_role(cluster: PrivatePostgres) -> None:
    for role in ("service_role", "anon", "authenticated"):
        sql(
            cluster.dsn(),
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
            f"'{role}') THEN CREATE ROLE {role}; END IF; END $$",
        )
    dsn = cluster.create_database("grants")
    apply_schema(dsn)
    apply_schema(dsn)

    def can(role: str) -> bool:
        query = (
            "SELECT has_function_privilege(%s,"
            " 'ocr_claim(text, integer, text, integer, bigint)', 'EXECUTE')"
        )
        return bool(sql(dsn, query, (role,))[0][0])

    assert can("service_role")
    assert not can("anon") and not can("authenticated")
