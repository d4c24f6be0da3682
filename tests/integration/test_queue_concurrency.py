"""Concurrency: 16 threads and 4 processes racing for 2,000 documents, on both transports."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter

import pytest

from tests.support import queue_fixtures
from tests.support.queue_fixtures import StoreCase, add_ready, sql
from tests.support.queue_workload import claim_until_empty, process_claimer

# Fixtures shared with the other queue modules.
queue_dsn = queue_fixtures.queue_dsn
store_case = queue_fixtures.store_case

pytestmark = pytest.mark.integration

DOCUMENTS = 2_000
THREADS = 16
PROCESSES = 4


def test_threads_and_processes_claim_every_document_exactly_once(store_case: StoreCase) -> None:
    add_ready(store_case.dsn, DOCUMENTS)
    ctx = multiprocessing.get_context("spawn")  # fork with live threads is unsafe
    start = ctx.Event()
    ready = ctx.Queue()
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=process_claimer, args=(store_case.spec(), f"proc-{i}", 5, ready, start, results)
        )
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()

    thread_ids: dict[str, list[int]] = {}

    def thread_claimer(name: str) -> None:
        start.wait(60)
        thread_ids[name] = claim_until_empty(store_case.store, name, 5)

    threads = [
        threading.Thread(target=thread_claimer, args=(f"thread-{i}",)) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for _ in procs:  # processes imported and connected: now they race with the threads
        ready.get(timeout=60)
    start.set()
    process_ids = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    for thread in threads:
        thread.join(60)

    claimed = [i for ids in [*thread_ids.values(), *process_ids.values()] for i in ids]
    twice = [doc for doc, n in Counter(claimed).items() if n > 1]
    assert twice == [], f"documents claimed more than once: {twice[:10]}"
    assert sorted(claimed) == list(range(1, DOCUMENTS + 1)), "every document claimed"
    assert sum(1 for ids in process_ids.values() if ids) >= 2, "processes took part"
    assert sql(
        store_case.dsn, "SELECT status_id, attempts, count(*) FROM extraction_queue GROUP BY 1, 2"
    ) == [(2, 0, DOCUMENTS)]  # claims count no attempt (starts do)
