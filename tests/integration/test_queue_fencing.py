"""Issue 10, on both transports: fenced deliveries and leader epochs in the SQL functions."""

from __future__ import annotations

import threading

import pytest

from control_plane.errors import LeaderFencedError
from control_plane.queue.models import Delivery, FailOutcome, ReapResult
from tests.support import queue_fixtures
from tests.support.queue_fixtures import StoreCase, add_ready, expire_leases, sql

queue_dsn = queue_fixtures.queue_dsn
store_case = queue_fixtures.store_case

pytestmark = pytest.mark.integration
LEASE = 60_000


@pytest.fixture(autouse=True)
def _fence_reset(queue_dsn: str) -> None:
    sql(queue_dsn, "UPDATE ocr_leader_fence SET epoch = 0, owner = NULL")


def state(dsn: str, doc_id: int) -> tuple[object, ...]:
    return sql(
        dsn,
        "SELECT status_id, attempts, lease_token, file_content, error_message, lost_deliveries"
        " FROM extraction_queue WHERE id = %s",
        (doc_id,),
    )[0]


def test_two_deliveries_of_one_claim_started_at_once_run_once(store_case: StoreCase) -> None:
    """The same message delivered twice (a redelivery racing the first): one start wins."""
    add_ready(store_case.dsn, 1)
    store = store_case.store
    (doc,) = store.claim("index", 1, "scheduler", LEASE)
    barrier = threading.Barrier(8)
    results: list[Delivery | None] = []
    lock = threading.Lock()

    def deliver(n: int) -> None:
        barrier.wait()
        got = store.start(doc.id, doc.lease_token, f"w{n}", LEASE, 3)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert winners[0].attempt == 1
    # The losers hold only the claim's token: they cannot give the claim back under the
    # winner, nor write anything.
    before = state(store_case.dsn, doc.id)
    assert not store.release(doc.id, doc.lease_token)
    assert not store.complete(doc.id, doc.lease_token, "loser", 1, 1)
    assert store.fail(doc.id, doc.lease_token, "x", permanent=True, max_attempts=3) is (
        FailOutcome.STALE
    )
    assert state(store_case.dsn, doc.id) == before
    assert store.complete(doc.id, winners[0].lease_token, "winner", 1, 1)
    assert state(store_case.dsn, doc.id)[:4] == (5, 1, None, "winner")


def test_attempts_count_starts_and_a_crash_loop_ends_in_error(store_case: StoreCase) -> None:
    """Every start counts; a delivery whose worker dies (lease lapses) is counted lost."""
    add_ready(store_case.dsn, 1)
    store = store_case.store
    for n in range(1, 4):
        (doc,) = store.claim("index", 1, "scheduler", LEASE)
        assert doc.attempts == n - 1
        delivery = store.start(doc.id, doc.lease_token, f"host-{n}", LEASE, 3)
        assert delivery is not None and delivery.attempt == n
        expire_leases(store_case.dsn)  # the worker process died: nobody renews
        assert store.reap(3) == (ReapResult(1, 0) if n < 3 else ReapResult(0, 1))
    status, attempts, token, _text, message, lost = state(store_case.dsn, doc.id)
    assert (status, attempts, token, lost) == (4, 3, None, 3)
    assert message == (
        "worker process died during processing 3 time(s) (last worker host-3): "
        "its lease expired on attempt 3 of 3, giving up"
    )


def test_a_start_beyond_the_limit_sends_the_document_to_error(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 1)
    store = store_case.store
    sql(store_case.dsn, "UPDATE extraction_queue SET attempts = 3")
    (doc,) = store.claim("index", 1, "scheduler", LEASE)
    assert store.start(doc.id, doc.lease_token, "w", LEASE, 3) is None
    assert state(store_case.dsn, doc.id)[:2] == (4, 3)
    assert state(store_case.dsn, doc.id)[4] == "out of attempts: 3 of 3 used"


def test_a_stale_leader_epoch_cannot_claim_or_reap(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, 4)
    store = store_case.store
    assert len(store.claim("index", 1, "leader-a", LEASE, epoch=100)) == 1
    assert store.leader_fence(101, "leader-b") == 101  # the new leader announces itself
    with pytest.raises(LeaderFencedError):
        store.claim("index", 2, "leader-a", LEASE, epoch=100)
    expire_leases(store_case.dsn)
    with pytest.raises(LeaderFencedError):
        store.reap(3, epoch=100)
    # Nothing moved for the stale leader: one claimed (expired, not reaped), three ready.
    counts = sql(
        store_case.dsn, "SELECT status_id, count(*) FROM extraction_queue GROUP BY 1 ORDER BY 1"
    )
    assert counts == [(2, 1), (3, 3)]
    assert store.reap(3, epoch=101) == ReapResult(1, 0)
    assert len(store.claim("index", 2, "leader-b", LEASE, epoch=101)) == 2
    claimed = sql(
        store_case.dsn, "SELECT DISTINCT claim_epoch FROM extraction_queue WHERE status_id = 2"
    )
    assert claimed == [(101,)]


def test_the_fence_never_goes_down_and_reports_a_higher_epoch(store_case: StoreCase) -> None:
    store = store_case.store
    assert store.leader_fence(50, "a") == 50
    assert store.leader_fence(7, "b") == 50, "an epoch that went backwards learns the fence"
    assert sql(store_case.dsn, "SELECT epoch, owner FROM ocr_leader_fence") == [(50, "a")]
    # A higher epoch through a claim lifts the fence too.
    assert store.claim("index", 1, "c", LEASE, epoch=60) == []
    assert store.leader_fence(0, "d") == 60
