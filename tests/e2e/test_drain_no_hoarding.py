"""A draining worker process must not fetch messages it will never run (issue 10, 4 + 7).

Attack on the merged drain: while a process drains (SIGTERM, one document still
finishing its chunks) Dramatiq keeps its consumers running until the worker threads
are joined, and the no-hoarding budget (idle threads) still says there is room, so the
draining process fetched new messages into its in-memory work queue. No thread of it
will ever run them: they waited there, hidden from every other process, until the
draining document finished (up to OCR_SHUTDOWN_GRACE_MS), and only then went back to
the queue. Another group sat idle meanwhile.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.emulator import EmulatorProcess
from tests.support.fencing import claim_messages, pid_of, publish_allocation, row, send
from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LONG_PAGES = 40  # ~40 s of chunks: the idle group boots well within it


def test_a_draining_process_leaves_new_messages_to_the_idle_group(
    pool: PoolHarness, emulator: EmulatorProcess
) -> None:
    emulator.configure(latency_ms=1000, latency_jitter_ms=0)
    (long_id,) = pool.seed(index=1, acte=0, pages=LONG_PAGES)
    short = pool.seed(index=2, acte=0, start=2, pages=1)
    pool.settings_env.update({"OCR_PAGES_PER_CHUNK": "1", "OCR_SHUTDOWN_GRACE_MS": "45000"})
    publish_allocation(pool, {"index": 3, "acte": 1})
    draining = pool.workers(processes=1, threads=3)
    wait_until(lambda: "worker.boot" in draining.log(), 60, message="the first group")
    (long_msg,) = claim_messages(pool, "index", 1)
    assert long_msg.id == long_id
    send(pool, long_msg)
    # The long document is in progress (a paid call made): the drain lets it finish.
    wait_until(
        lambda: (
            row(pool.dsn, long_id)["started_at"] is not None and emulator.stats()["requests"] >= 1
        ),
        60,
        message=lambda: f"the long document in progress\n{draining.log()[-2000:]}",
    )
    draining.send(signal.SIGTERM)
    wait_until(lambda: "worker.draining" in draining.log(), 30, message="the drain to begin")
    time.sleep(2.0)  # the draining group's idle threads have exited by now
    messages = claim_messages(pool, "index", 2)
    assert {m.id for m in messages} == set(short)
    send(pool, *messages)
    time.sleep(1.0)  # a draining consumer polls every 100 ms: it would have them by now
    idle = pool.workers(processes=1, threads=2)
    # The idle group runs both new documents while the long one is still draining.
    wait_until(
        lambda: all(row(pool.dsn, i)["status_id"] == 5 for i in short),
        LONG_PAGES * 4,
        message=lambda: (
            f"the new documents done: {[row(pool.dsn, i) for i in short]}\n"
            f"long: {row(pool.dsn, long_id)}\ndraining:\n{draining.log()[-3000:]}\n"
            f"idle:\n{idle.log()[-2000:]}"
        ),
    )
    assert draining.popen.wait(90) == 0, draining.log()[-3000:]  # the drain still exits 0
    long_row = row(pool.dsn, long_id)
    assert long_row["status_id"] == 5  # and the long document was finished, not given back
    for i in short:
        done = row(pool.dsn, i)
        assert pid_of(str(done["worker_id"])) != pid_of(str(long_row["worker_id"]))
        assert done["completed_at"] < long_row["completed_at"], (
            f"document {i} waited in the draining process until its drain ended"
        )
    assert idle.stop() == 0
