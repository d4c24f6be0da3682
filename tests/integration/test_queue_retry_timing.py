"""Retry timing in the queue (issue 11), on both transports: a document sent back after a
transient failure or an outage is not claimed again before its not-before time; the other
ready documents go first; counts still show it as ready, and as waiting to retry."""

from __future__ import annotations

import pytest

from control_plane.queue.models import FailOutcome, QueueCounts
from tests.support import queue_fixtures
from tests.support.queue_fixtures import StoreCase, add_ready, sql

queue_dsn = queue_fixtures.queue_dsn
store_case = queue_fixtures.store_case

pytestmark = pytest.mark.integration
LEASE = 60_000


def test_a_failed_document_waits_and_the_others_go_first(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 3)
    store = store_case.store
    (first,) = store.claim("index", 1, "w1", LEASE)
    assert first.id == 1
    delivery = store.start(first.id, first.lease_token, "w1", LEASE, 3)
    assert delivery is not None
    outcome = store.fail(
        first.id,
        delivery.lease_token,
        "Gemini 503",
        permanent=False,
        max_attempts=3,
        retry_after_ms=60_000,
    )
    assert outcome is FailOutcome.RETRY
    # Round 1 claimed document 1 again at once (lowest id): now 2 and 3 come first ...
    assert [d.id for d in store.claim("index", 5, "w1", LEASE)] == [2, 3]
    # ... and document 1 is still ready, counted as waiting to retry.
    assert store.counts()["index"] == QueueCounts(ready=1, in_flight=2, waiting_retry=1)
    assert store.claim("index", 5, "w1", LEASE) == []
    # Once due it is claimed like any other, with its attempts kept (one start so far).
    sql(store_case.dsn, "UPDATE extraction_queue SET retry_not_before = now() - interval '1s'")
    (again,) = store.claim("index", 5, "w1", LEASE)
    assert (again.id, again.attempts) == (1, 1)
    assert store.counts()["index"].waiting_retry == 0


def test_a_failure_without_delay_is_due_at_once(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    store = store_case.store
    (doc,) = store.claim("index", 1, "w1", LEASE)
    store.fail(doc.id, doc.lease_token, "x", permanent=False, max_attempts=3)
    assert [d.id for d in store.claim("index", 1, "w1", LEASE)] == [1]


def test_a_release_during_an_outage_waits_without_counting_an_attempt(
    store_case: StoreCase,
) -> None:
    add_ready(store_case.dsn, 2)
    store = store_case.store
    (doc,) = store.claim("index", 1, "w1", LEASE)
    assert store.release(doc.id, doc.lease_token, retry_after_ms=60_000)
    ((attempts, waiting),) = sql(
        store_case.dsn,
        "SELECT attempts, retry_not_before > now() FROM extraction_queue WHERE id = 1",
    )
    assert (attempts, waiting) == (0, True)
    assert [d.id for d in store.claim("index", 5, "w1", LEASE)] == [2]
    # A plain release (shutdown) is due at once.
    (other,) = sql(store_case.dsn, "SELECT lease_token::text FROM extraction_queue WHERE id = 2")
    assert store.release(2, other[0])
    assert [d.id for d in store.claim("index", 5, "w1", LEASE)] == [2]
