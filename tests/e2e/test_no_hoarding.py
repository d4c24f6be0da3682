"""Issue 10 point 4: a message waits on the queue, not in a busy process's buffer.

Two worker processes of one thread each. While one runs a long document, the next
message of that type must go to the idle one at once. With Dramatiq's default prefetch
(2 x threads per queue) the busy process's consumer fetched it half of the time and held
it until its thread was free, while the other process sat idle.
"""

from __future__ import annotations

import pytest

from tests.support.emulator import EmulatorProcess
from tests.support.fencing import claim_messages, pid_of, publish_allocation, row, send
from tests.support.pool import PoolHarness, Proc, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUNDS = 4


def started(pool: PoolHarness, doc_id: int) -> dict[str, object] | None:
    state = row(pool.dsn, doc_id)
    return state if state["started_at"] is not None else None


def one_round(pool: PoolHarness, workers: Proc, n: int) -> None:
    """A long document starts on one process; the next one must start on the other."""
    (first,) = claim_messages(pool, "index", 1)
    send(pool, first)
    busy = wait_until(lambda: started(pool, first.id), 20, message="the first to start")
    (second,) = claim_messages(pool, "index", 1)
    send(pool, second)
    other = wait_until(
        lambda: started(pool, second.id),
        20,
        message=lambda: f"round {n}: the second to start\n{workers.log()[-2000:]}",
    )
    assert pid_of(str(other["worker_id"])) != pid_of(str(busy["worker_id"])), (
        f"round {n}: the busy process took the message"
    )
    still = row(pool.dsn, first.id)
    assert still["completed_at"] is None or still["completed_at"] > other["started_at"], (
        f"round {n}: the second waited for the first to finish"
    )
    wait_until(
        lambda: pool.status_counts().get(5, 0) == 2 * (n + 1),
        30,
        message=lambda: f"round {n} done: {pool.status_counts()}",
    )


def test_the_idle_process_takes_the_message_while_the_other_is_busy(
    pool: PoolHarness, emulator: EmulatorProcess
) -> None:
    emulator.configure(latency_ms=2500, latency_jitter_ms=0)
    pool.seed(index=2 * ROUNDS, acte=0)
    publish_allocation(pool, {"index": 3, "acte": 1})
    workers = pool.workers(processes=2, threads=1)
    wait_until(lambda: workers.log().count("worker.boot") >= 2, 30, message="two workers")
    for n in range(ROUNDS):
        one_round(pool, workers, n)
    assert workers.stop() == 0
