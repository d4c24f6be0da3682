"""Graceful drain of the real `dramatiq actors` command (issue 10, point 7).

SIGTERM to the worker group (its master, as a supervisor or Ctrl+C does) in the
middle of multi-chunk documents, one page per chunk: every document in progress
finishes ALL its chunks and is written, waiting ones go back to ready at once,
the group exits 0, and after a restart every document is done without any chunk
sent to Gemini twice. Past OCR_SHUTDOWN_GRACE_MS the rest is given back, still
exiting 0.
"""

from __future__ import annotations

import re
import signal
import time

import psycopg
import pytest

from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DONE, ERROR, IN_FLIGHT, READY = 5, 4, 2, 3


def started_in_flight(dsn: str) -> set[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id FROM extraction_queue WHERE status_id = 2 AND started_at IS NOT NULL"
        ).fetchall()
    return {int(r[0]) for r in rows}


def statuses(dsn: str) -> dict[int, tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, status_id, attempts FROM extraction_queue").fetchall()
    return {int(i): (int(s), int(a)) for i, s, a in rows}


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigterm-to-master", "ctrl-c-to-group"],
)
def test_sigterm_mid_document_finishes_every_chunk_and_exits_0(
    pool: PoolHarness, emulator, sig: signal.Signals, group: bool
) -> None:
    emulator.configure(latency_ms=900, latency_jitter_ms=100)
    pages = 4
    expected = pool.seed(index=0, acte=16, pages=pages)
    env = {"OCR_PAGES_PER_CHUNK": "1", "OCR_SHUTDOWN_GRACE_MS": "40000"}
    pool.settings_env.update(env)
    scheduler = pool.scheduler()
    workers = pool.workers(processes=1, threads=6)
    # Documents early in their chunks: first calls answered, later ones still to make.
    wait_until(
        lambda: emulator.stats()["requests"] >= 4 and emulator.stats()["in_flight"] >= 3,
        90,
        message=lambda: f"documents in progress: {pool.status_counts()}\n{workers.log()[-2000:]}",
    )
    in_progress = started_in_flight(pool.dsn)
    calls_before = emulator.stats()["requests"]
    stopped_at = time.monotonic()
    # Both stop (the scheduler's feed too, so that what the drain gives back stays at ready).
    scheduler.send(signal.SIGTERM)
    workers.send(sig, group=group)  # Ctrl+C: SIGINT to the whole process group
    code = workers.popen.wait(60)
    drain_s = time.monotonic() - stopped_at
    assert scheduler.popen.wait(60) == 0
    log = workers.log()
    assert code == 0, log[-3000:]
    assert len(in_progress) >= 3, in_progress

    after = statuses(pool.dsn)
    # Nothing left started by the stopped group (the scheduler, still running, keeps
    # documents claimed on the queue for the next workers), nothing failed.
    assert started_in_flight(pool.dsn) == set(), after
    assert not [i for i, (s, _) in after.items() if s == ERROR], after
    released_early = {
        int(m.group(1))
        for line in log.splitlines()
        if "job.released" in line and "first Gemini call" in line
        for m in [re.search(r"document=\w+/(\d+)", line)]
        if m
    } & {i for i in in_progress if after[i][0] == READY}
    finished = {i for i in in_progress if after[i][0] == DONE}
    # Every document that was in progress finished all its chunks (bar any still waiting
    # for its first call, which goes back at once, as the seed's "waiting" jobs do).
    assert finished | released_early == in_progress, (in_progress, after)
    assert len(finished) >= 3, (finished, in_progress)
    assert emulator.stats()["requests"] > calls_before, "nothing was finished after SIGTERM"
    # The look-ahead document waiting in a thread for a slot went back at once: before
    # any document in progress finished (log lines of one process are in time order).
    lines = log.splitlines()
    drain_at = next(n for n, line in enumerate(lines) if "worker.draining" in line)
    waiting_back = [
        n
        for n, line in enumerate(lines)
        if n > drain_at and "job.released" in line and "worker stopping" in line
    ]
    first_done = next(
        (n for n, line in enumerate(lines) if n > drain_at and "job.completed" in line), None
    )
    assert waiting_back and first_done is not None and waiting_back[0] < first_done, log[-3000:]
    assert "worker.draining" in log and "worker process stopped cleanly" in log
    assert "worker.drain_expired" not in log, "the grace period should have been enough"
    # Given back without an attempt: a drain is not the document's fault.
    assert all(after[i][1] == 0 for i, (s, _) in after.items() if s == READY), after

    pool.scheduler()
    restarted = pool.workers(processes=1, threads=6)
    wait_until(
        lambda: pool.status_counts().get(DONE, 0) >= len(expected),
        120,
        message=lambda: f"all done after restart: {pool.status_counts()}",
    )
    stats = emulator.stats()
    # One page per chunk: a repeated Gemini call for any document shows as a count of 2.
    assert stats["max_calls_per_document"] == 1, "a chunk was sent to Gemini twice"
    assert stats["requests"] == pages * len(expected), stats["requests"]
    assert restarted.stop() == 0
    print(
        f"\nDRAIN in_progress={len(in_progress)} finished={len(finished)} "
        f"released_early={len(released_early)} drain_s={drain_s:.1f}"
    )


def test_past_the_grace_period_documents_go_back_and_the_group_still_exits_0(
    pool: PoolHarness, emulator
) -> None:
    emulator.configure(latency_ms=2500, latency_jitter_ms=0)
    pool.seed(index=0, acte=4, pages=3)
    pool.settings_env.update({"OCR_PAGES_PER_CHUNK": "1", "OCR_SHUTDOWN_GRACE_MS": "1000"})
    scheduler = pool.scheduler()
    workers = pool.workers(processes=1, threads=4)
    wait_until(
        lambda: emulator.stats()["in_flight"] >= 2,
        60,
        message=lambda: f"calls in flight\n{workers.log()[-2000:]}",
    )
    assert scheduler.stop() == 0  # what is given back stays at ready
    in_progress = started_in_flight(pool.dsn)
    workers.send(signal.SIGTERM)
    assert workers.popen.wait(60) == 0, workers.log()[-3000:]
    log = workers.log()
    assert "worker.drain_expired" in log, log[-3000:]
    after = statuses(pool.dsn)
    # A 3-call document cannot finish in 1 s: given back to ready, no attempt counted.
    back = {i for i in in_progress if after[i] == (READY, 0)}
    assert back, (in_progress, after)
    assert started_in_flight(pool.dsn) == set(), after
    assert not [i for i, (s, _) in after.items() if s == ERROR], after


def test_sigterm_gives_back_at_once_the_jobs_still_waiting_for_quota(
    pool: PoolHarness, emulator
) -> None:
    # A scarce quota: most jobs hold a slot but wait in the limiter for their only call.
    emulator.configure(latency_ms=1500, latency_jitter_ms=0)
    pool.seed(index=0, acte=10, pages=1)
    pool.settings_env.update(
        {
            "GEMINI_RPM_LIMIT": "2",
            "GEMINI_RATE_WINDOW_MS": "4000",
            "OCR_SHUTDOWN_GRACE_MS": "40000",
        }
    )
    scheduler = pool.scheduler()
    workers = pool.workers(processes=1, threads=6)
    wait_until(
        lambda: emulator.stats()["in_flight"] >= 1 and len(started_in_flight(pool.dsn)) >= 3,
        60,
        message=lambda: f"jobs waiting for quota\n{workers.log()[-2000:]}",
    )
    in_flight_calls = emulator.stats()["in_flight"]
    calls_before = emulator.stats()["requests"]
    scheduler.send(signal.SIGTERM)
    workers.send(signal.SIGTERM)
    assert workers.popen.wait(60) == 0, workers.log()[-3000:]
    assert scheduler.popen.wait(60) == 0
    log = workers.log()
    released = [
        line for line in log.splitlines() if "job.released" in line and "first Gemini call" in line
    ]
    # The waiting ones went back without their call: no new call after the signal beyond
    # those already granted, and none of them counted an attempt.
    assert released, log[-3000:]
    assert emulator.stats()["requests"] <= calls_before + in_flight_calls + 1
    after = statuses(pool.dsn)
    assert started_in_flight(pool.dsn) == set(), after
    for line in released:
        m = re.search(r"document=\w+/(\d+)", line)
        assert m and after[int(m.group(1))] == (READY, 0), (line, after)
