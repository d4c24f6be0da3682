"""A full host hands a message only to a host that consumes its type (issue 10, point 6).

Attack on the merged hand-off: a job refused a slot for its host's budget hands its
message back to the queue when ANY other live host has CPU/RAM room, even a host whose
workers consume only the other queue (`dramatiq actors -Q ocr-acte`, issue 14). Nobody
there takes it, so the message came straight back to the full host, was handed off
again half a second later, and so on for as long as the host stayed full: a busy loop
of requeues (and log lines) that also sent the document to the back of its queue each
time. Now only hosts with a thread consuming the type count as "room elsewhere".
"""

from __future__ import annotations

import signal
import sys

import pytest

from tests.support.emulator import EmulatorProcess
from tests.support.fencing import claim_messages, publish_allocation, send
from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DONE = 5
# 3.125 vCPU - 20% = 2.5 vCPU: one index slot (1.5 vCPU) on host-a, not two.
SMALL_HOST = {"SERVER_MAX_CPU": "3.125", "SERVER_MAX_RAM": "16"}


def test_a_full_host_never_hands_a_type_to_a_host_that_does_not_run_it(
    pool: PoolHarness, emulator: EmulatorProcess
) -> None:
    emulator.configure(latency_ms=6000, latency_jitter_ms=0)
    pool.seed(index=2, acte=0, pages=1)
    publish_allocation(pool, {"index": 2, "acte": 1})
    full = pool.workers(processes=1, threads=3, OCR_HOST_NAME="host-a", **SMALL_HOST)
    # A big host that runs only actes: room for index slots, but no index consumer.
    actes_only = pool.start(
        "workers-acte",
        [
            sys.executable,
            "-m",
            "dramatiq",
            "actors",
            "-p",
            "1",
            "-t",
            "2",
            "-Q",
            "ocr-acte",
            "--worker-shutdown-timeout",
            "60000",
        ],
        OCR_HOST_NAME="host-b",
    )
    client = pool.redis()
    wait_until(
        lambda: (
            client.hlen(f"{pool.prefix}server:hosts") == 2
            and "worker.boot" in full.log()
            and "worker.boot" in actes_only.log()
        ),
        60,
        message=lambda: f"both hosts up\n{full.log()[-1500:]}\n{actes_only.log()[-1500:]}",
    )
    send(pool, *claim_messages(pool, "index", 2))
    wait_until(
        lambda: pool.status_counts().get(DONE, 0) == 2,
        90,
        message=lambda: f"both done: {pool.status_counts()}\n{full.log()[-3000:]}",
    )
    hand_offs = full.log().count("job.handed_off")
    # The second document waits for host-a's slot (one document, 6 s): handed to host-b
    # it would bounce about every half second.
    assert hand_offs == 0, f"{hand_offs} hand-off(s) to a host without an index consumer"
    assert full.stop() == 0
    assert actes_only.stop() == 0


def test_a_full_host_never_hands_a_message_to_a_draining_host(
    pool: PoolHarness, emulator: EmulatorProcess
) -> None:
    """A draining process fetches nothing: handed to it, a message would bounce back."""
    emulator.configure(latency_ms=15_000, latency_jitter_ms=0)
    ids = sorted(pool.seed(index=3, acte=0, pages=1))
    publish_allocation(pool, {"index": 3, "acte": 1})
    draining = pool.workers(processes=1, threads=1, OCR_HOST_NAME="host-b")
    wait_until(lambda: "worker.boot" in draining.log(), 60, message="host-b up")
    send(pool, *claim_messages(pool, "index", 1))
    wait_until(
        lambda: emulator.stats()["in_flight"] >= 1, 60, message="host-b's document in progress"
    )
    draining.send(signal.SIGTERM)  # host-b drains its document (15 s), with room to spare
    wait_until(lambda: "worker.draining" in draining.log(), 30, message="host-b draining")
    full = pool.workers(processes=1, threads=3, OCR_HOST_NAME="host-a", **SMALL_HOST)
    wait_until(lambda: "worker.boot" in full.log(), 60, message="host-a up")
    send(pool, *claim_messages(pool, "index", 2))  # host-a runs one, the other must wait
    wait_until(
        lambda: pool.status_counts().get(DONE, 0) == 3,
        120,
        message=lambda: f"all done: {pool.status_counts()}\n{full.log()[-3000:]}",
    )
    assert draining.popen.wait(60) == 0
    hand_offs = full.log().count("job.handed_off")
    assert hand_offs == 0, f"{hand_offs} hand-off(s) to a draining host"
    assert len(ids) == 3
    assert full.stop() == 0
