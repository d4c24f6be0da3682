"""The queue's behaviour, identical on both transports (direct Postgres and Supabase RPC)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from control_plane.errors import PermanentError, TransientError
from control_plane.queue.models import FailOutcome, QueueCounts, ReapResult
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.supabase import SupabaseStore
from tests.support import queue_fixtures
from tests.support.queue_fixtures import StoreCase, add_ready, expire_leases, sql

# Fixtures shared with the other queue modules.
queue_dsn = queue_fixtures.queue_dsn
store_case = queue_fixtures.store_case

pytestmark = pytest.mark.integration
LEASE = 60_000


def row(dsn: str, doc_id: int) -> dict[str, object]:
    cols = [
        "status_id",
        "worker_id",
        "lease_token",
        "attempts",
        "file_content",
        "error_message",
        "prompt_tokens",
        "output_tokens",
    ]
    found = sql(dsn, f"SELECT {', '.join(cols)} FROM extraction_queue WHERE id = %s", (doc_id,))
    return dict(zip(cols, found[0], strict=True))


def test_rows_inserted_with_only_type_path_and_status_are_claimed(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 3)
    docs = store_case.store.claim("index", 10, "w1", LEASE)
    assert [d.id for d in docs] == [1, 2, 3]
    first = docs[0]
    assert first.environment == "dev" and first.document_source == "index"
    assert first.storage_path == "doc/1.pdf" and first.attempts == 0  # counted at start
    assert first.lease_expires_at > datetime.now(UTC)
    uuid.UUID(first.lease_token)  # a real uuid
    assert row(store_case.dsn, 1)["status_id"] == 2
    assert row(store_case.dsn, 1)["worker_id"] == "w1"


def test_claim_takes_oldest_first_and_only_the_asked_type(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 2, "acte")
    add_ready(store_case.dsn, 5, "index")
    docs = store_case.store.claim("index", 2, "w1", LEASE)
    assert [d.id for d in docs] == [3, 4]
    assert {d.document_source for d in docs} == {"index"}
    assert store_case.store.counts() == {
        "index": QueueCounts(ready=3, in_flight=2),
        "acte": QueueCounts(ready=2, in_flight=0),
    }


def test_lifecycle_start_renew_complete_writes_once(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    store = store_case.store
    (doc,) = store.claim("index", 1, "w1", LEASE)
    delivery = store.start(doc.id, doc.lease_token, "w1/thread-2", LEASE, 3)
    assert delivery is not None and delivery.attempt == 1
    assert delivery.lease_token != doc.lease_token, "each delivery gets its own token"
    assert not store.complete(doc.id, doc.lease_token, "claim token", 1, 1)
    assert store.renew(doc.id, delivery.lease_token, LEASE)
    assert store.complete(doc.id, delivery.lease_token, "texte OCR\x00 é", 258, 40)
    assert not store.complete(doc.id, delivery.lease_token, "second write", 1, 1)
    written = row(store_case.dsn, doc.id)
    assert written["status_id"] == 5 and written["file_content"] == "texte OCR é"
    assert (written["prompt_tokens"], written["output_tokens"]) == (258, 40)
    assert written["lease_token"] is None and written["worker_id"] == "w1/thread-2"
    assert written["attempts"] == 1
    assert not store.renew(doc.id, delivery.lease_token, LEASE)


def test_stale_token_after_reap_and_reclaim_changes_nothing(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    store = store_case.store
    (old,) = store.claim("index", 1, "w-old", LEASE)
    late = store.start(old.id, old.lease_token, "w-old", LEASE, 3)
    assert late is not None
    expire_leases(store_case.dsn)
    assert store.reap(3) == ReapResult(requeued=1, errored=0)
    (new,) = store.claim("index", 1, "w-new", LEASE)
    assert new.id == old.id and new.lease_token != old.lease_token and new.attempts == 1
    current = store.start(new.id, new.lease_token, "w-new", LEASE, 3)
    assert current is not None and current.attempt == 2

    before = row(store_case.dsn, old.id)
    for token in (old.lease_token, late.lease_token):  # the claim's and the late delivery's
        assert not store.complete(old.id, token, "old text", 1, 1)
        assert (
            store.fail(old.id, token, "old failure", permanent=True, max_attempts=3)
            is FailOutcome.STALE
        )
        assert store.start(old.id, token, "w-old", LEASE, 3) is None
        assert not store.renew(old.id, token, LEASE)
        assert not store.release(old.id, token)
    assert row(store_case.dsn, old.id) == before, "a stale token must change nothing"

    assert store.complete(new.id, current.lease_token, "new text", 5, 6)
    assert not store.complete(new.id, current.lease_token, "again", 7, 8)
    assert row(store_case.dsn, new.id)["file_content"] == "new text"


def test_fail_retries_then_errors_after_max_attempts(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    store = store_case.store
    outcomes = []
    for _ in range(3):
        (doc,) = store.claim("index", 1, "w1", LEASE)
        delivery = store.start(doc.id, doc.lease_token, "w1", LEASE, 3)
        assert delivery is not None
        outcomes.append(
            store.fail(
                doc.id,
                delivery.lease_token,
                f"Gemini 503 on attempt {delivery.attempt}",
                permanent=False,
                max_attempts=3,
            )
        )
    assert outcomes == [FailOutcome.RETRY, FailOutcome.RETRY, FailOutcome.ERROR]
    final = row(store_case.dsn, doc.id)
    assert final["status_id"] == 4 and final["attempts"] == 3
    assert final["error_message"] == "Gemini 503 on attempt 3"
    assert store.claim("index", 1, "w1", LEASE) == []


def test_permanent_failure_goes_to_error_at_once(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    (doc,) = store_case.store.claim("index", 1, "w1", LEASE)
    outcome = store_case.store.fail(
        doc.id, doc.lease_token, "not a PDF (starts with b'<html>')", permanent=True, max_attempts=3
    )
    assert outcome is FailOutcome.ERROR
    assert row(store_case.dsn, doc.id)["status_id"] == 4
    assert row(store_case.dsn, doc.id)["error_message"] == "not a PDF (starts with b'<html>')"


def test_release_returns_to_ready_without_counting_the_attempt(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    store = store_case.store
    for n in range(6):  # e.g. repeated 429s: never runs out of attempts
        (doc,) = store.claim("index", 1, "w1", LEASE)
        token = doc.lease_token
        if n % 2:  # given back after its start: the attempt the start counted is returned
            delivery = store.start(doc.id, doc.lease_token, "w1", LEASE, 3)
            assert delivery is not None and delivery.attempt == 1
            token = delivery.lease_token
        assert store.release(doc.id, token)
    assert row(store_case.dsn, doc.id)["attempts"] == 0
    assert row(store_case.dsn, doc.id)["status_id"] == 3
    assert store.counts()["index"] == QueueCounts(ready=1, in_flight=0)


def test_reap_requeues_expired_leases_then_errors_after_max_attempts(
    store_case: StoreCase,
) -> None:
    add_ready(store_case.dsn, 2)
    store = store_case.store
    results = []
    for _ in range(3):
        docs = store.claim("index", 1, "w-crashed", LEASE)  # only the first document
        assert store.start(docs[0].id, docs[0].lease_token, "w-crashed", LEASE, 3)
        expire_leases(store_case.dsn)
        results.append(store.reap(3))
    assert results == [ReapResult(1, 0), ReapResult(1, 0), ReapResult(0, 1)]
    dead = row(store_case.dsn, docs[0].id)
    assert dead["status_id"] == 4 and dead["attempts"] == 3
    assert dead["error_message"] == (
        "worker process died during processing 3 time(s) (last worker w-crashed): "
        "its lease expired on attempt 3 of 3, giving up"
    )
    assert row(store_case.dsn, 2)["status_id"] == 3, "the other document is untouched"


def test_reap_gives_back_the_attempt_of_a_claim_never_started(store_case: StoreCase) -> None:
    """A message that waited in a queue (or was lost) past its lease costs no attempt."""
    add_ready(store_case.dsn, 1)
    store = store_case.store
    for _ in range(5):
        (doc,) = store.claim("index", 1, "scheduler", LEASE)
        expire_leases(store_case.dsn)
        assert store.reap(3) == ReapResult(requeued=1, errored=0)
    again = row(store_case.dsn, doc.id)
    assert again["status_id"] == 3 and again["attempts"] == 0


def test_reap_leaves_live_leases_alone(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 3)
    docs = store_case.store.claim("index", 3, "w1", LEASE)
    assert store_case.store.reap(1) == ReapResult(0, 0)
    assert store_case.store.counts()["index"] == QueueCounts(ready=0, in_flight=3)
    assert all(store_case.store.renew(d.id, d.lease_token, LEASE) for d in docs)


def test_a_malformed_lease_token_is_a_permanent_error(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    (doc,) = store_case.store.claim("index", 1, "w1", LEASE)
    with pytest.raises(PermanentError, match="22P02"):
        store_case.store.complete(doc.id, "not-a-uuid", "x", 1, 1)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "PGRST001", TransientError),
        (503, "08006", TransientError),
        (500, "40001", TransientError),
        (502, "502", TransientError),
        (400, "P0001", PermanentError),
        (409, "23505", PermanentError),
        (404, "PGRST202", PermanentError),
    ],
)
def test_supabase_errors_map_to_transient_or_permanent(
    queue_dsn: str, status: int, code: str, expected: type[Exception]
) -> None:
    from tests.support.supabase_endpoint import supabase_endpoint

    with supabase_endpoint(queue_dsn) as endpoint:
        store = SupabaseStore("dev", endpoint.url, endpoint.service_key)
        try:
            endpoint.inject(status, code)
            with pytest.raises(expected, match=code):
                store.counts()
            assert isinstance(store.counts(), dict), "the next call works again"
        finally:
            store.close()


def test_supabase_wrong_key_is_permanent_and_unreachable_is_transient(queue_dsn: str) -> None:
    from tests.support.supabase_endpoint import supabase_endpoint

    with supabase_endpoint(queue_dsn) as endpoint:
        wrong = SupabaseStore("dev", endpoint.url, "not-the-key")
        try:
            with pytest.raises(PermanentError, match="Invalid API key") as info:
                wrong.counts()
            assert "not-the-key" not in str(info.value)
        finally:
            wrong.close()
        closed_url = endpoint.url
    gone = SupabaseStore("dev", closed_url, "k", timeout_s=2)
    try:
        with pytest.raises(TransientError, match="ConnectError"):
            gone.claim("index", 1, "w1", LEASE)
    finally:
        gone.close()


def test_postgres_unreachable_is_transient_and_never_shows_the_password() -> None:
    store = PostgresStore(
        "dev", "postgresql://postgres:s3cretpw@127.0.0.1:1/x", pool_timeout_s=1, connect_timeout_s=1
    )
    try:
        with pytest.raises(TransientError) as info:
            store.counts()
        assert "s3cretpw" not in str(info.value) and "s3cretpw" not in repr(store)
    finally:
        store.close()


def test_rows_of_other_types_are_left_alone(pg_database_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 12: other writers may use any document_source; the pool never touches them."""
    from control_plane.queue.migrate import apply_schema

    dsn = pg_database_factory("unknown")
    apply_schema(dsn)
    sql(
        dsn,
        "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
        " VALUES ('facture', 'x.pdf', 3), ('plan', 'p.pdf', 2)",
    )
    add_ready(dsn, 1)
    store = PostgresStore("dev", dsn)
    try:
        assert store.reap(3) == ReapResult()
        assert set(store.counts()) == {"index", "acte"}
        assert [d.document_source for d in store.claim("index", 5, "w", 60_000)] == ["index"]
    finally:
        store.close()
    assert sql(
        dsn,
        "SELECT document_source, status_id, error_message FROM extraction_queue"
        " WHERE document_source <> 'index' ORDER BY id",
    ) == [("facture", 3, None), ("plan", 2, None)]
