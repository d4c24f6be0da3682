"""Three environments, one broken for good, one unreachable, one healthy (issue 12).

The real pool (scheduler + workers as processes) runs the healthy environment's
documents twice: alone, then beside `prod` (a database never migrated: every call fails
at once with "function ocr_claim does not exist") and `staging` (a server that accepts
TCP connections and never answers: every connection attempt runs into its timeout).
Every healthy document must be done, the status block must say what is wrong with the
other two, and the time is compared with the run alone (the ratio is printed; wall-clock
bounds are not asserted on a shared machine).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.emulator import EmulatorProcess
from tests.support.pool import fresh_pool, wait_until

pytestmark = pytest.mark.e2e
INDEX, ACTE = 30, 12
DONE = 5


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that completes TCP handshakes and then never says a word (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def run_healthy(
    dsn: str, redis_url: str, emulator: EmulatorProcess, workdir: Path, **env: str
) -> tuple[float, str, str]:
    """Seconds until every healthy document is done; the scheduler's and a status output."""
    with fresh_pool(dsn, redis_url, emulator.url, workdir, **env) as pool:
        expected = pool.seed(index=INDEX, acte=ACTE)
        started = time.monotonic()
        scheduler = pool.scheduler()
        workers = pool.workers(processes=1, threads=8)
        wait_until(
            lambda: pool.status_counts().get(DONE, 0) == len(expected),
            180,
            message=lambda: f"{pool.status_counts()}\n{scheduler.log()[-3000:]}",
        )
        elapsed = time.monotonic() - started
        status = pool.run("status", timeout=120)
        rows = {r["id"]: r for r in pool.rows()}
        for doc_id, text in expected.items():
            assert rows[doc_id]["status_id"] == DONE
            assert text.split()[0] in rows[doc_id]["file_content"]
        assert workers.stop() == 0 and scheduler.stop() == 0
        return elapsed, scheduler.log(), status.stdout + status.stderr


def test_a_broken_and_an_unreachable_environment_cost_the_healthy_one_nothing(
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    emulator: EmulatorProcess,
    tmp_path: Path,
) -> None:
    alone, _, alone_status = run_healthy(
        pg_database_factory("iso_alone"), redis_url, emulator, tmp_path / "alone"
    )
    assert "dev ok" in alone_status, alone_status
    broken = pg_database_factory("iso_broken")  # never migrated
    with silent_server() as port:
        beside, log, status = run_healthy(
            pg_database_factory("iso_beside"),
            redis_url,
            emulator,
            tmp_path / "beside",
            STAGING_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x",
            PROD_DATABASE_URL=broken,
        )
    ratio = beside / alone
    print(
        f"\nhealthy environment: {INDEX + ACTE} documents alone {alone:.1f}s, beside a broken"
        f" and an unreachable one {beside:.1f}s: ratio {ratio:.2f}"
    )
    print(status)
    # The scheduler's own status block (every OCR_STATUS_INTERVAL_MS) says the same.
    blocks = [b for b in log.split("OCR pool status") if "Environments" in b]
    assert blocks and "staging UNREACHABLE (" in blocks[-1], log[-3000:]
    assert "prod BROKEN (" in blocks[-1], log[-3000:]
    assert "dev ok" in status
    assert "prod BROKEN (" in status, status
    assert "ocr_claim" in status or "ocr_counts" in status, status
    assert "staging UNREACHABLE (" in status, status
    assert "queue.claim_unavailable" in log or "queue.counts_unavailable" in log
    assert "Traceback" not in log, log[-3000:]
