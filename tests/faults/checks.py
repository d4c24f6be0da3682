"""What every fault case checks at the end of its run, and small DB probes."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from tests.support.emulator import EmulatorProcess
from tests.support.pool import PoolHarness, wait_until

DONE, ERROR, IN_FLIGHT, READY = 5, 4, 2, 3

AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS fault_result_writes (
    doc_id     bigint      NOT NULL,
    old_status smallint    NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION fault_audit_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_result_writes (doc_id, old_status) VALUES (NEW.id, OLD.status_id);
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS fault_audit_result ON extraction_queue;
CREATE TRIGGER fault_audit_result AFTER UPDATE ON extraction_queue FOR EACH ROW
    WHEN (NEW.status_id = 5 OR NEW.file_content IS DISTINCT FROM OLD.file_content)
    EXECUTE FUNCTION fault_audit_result();
"""


def install_audit(dsn: str) -> None:
    """Test database only: record every update that writes a result (status 5 or text)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIT_SQL)


def duplicate_writes(dsn: str) -> int:
    """Result writes beyond the first per document (0 when every result was written once)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) - count(DISTINCT doc_id) FROM fault_result_writes"
        ).fetchone()
    return int(row[0]) if row else 0


def db_now(dsn: str) -> float:
    """The database clock as epoch seconds (completed_at is on that clock)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
    assert row is not None
    return float(row[0])


def running_jobs(dsn: str) -> list[int]:
    """Documents a worker has started and not finished (status 2, started_at set)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id FROM extraction_queue WHERE status_id = 2 AND started_at IS NOT NULL"
        ).fetchall()
    return [int(r[0]) for r in rows]


def last_completed_at(dsn: str, ids: list[int]) -> float | None:
    """Epoch seconds of the last completion among `ids` (None if one is not done)."""
    if not ids:
        return None
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT bool_and(status_id = 5), extract(epoch FROM max(completed_at)) "
            "FROM extraction_queue WHERE id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert row is not None
    return float(row[1]) if row[0] else None


def wait_all_done(pool: PoolHarness, total: int, timeout: float, *logs: Any) -> float:
    """Wait until `total` documents are in status 5; returns the time it took."""
    started = time.monotonic()
    wait_until(
        lambda: pool.status_counts().get(DONE, 0) >= total,
        timeout,
        message=lambda: (
            f"all {total} documents done: {pool.status_counts()}\n"
            + "\n".join(p.log()[-2500:] for p in logs)
        ),
    )
    return time.monotonic() - started


def assert_outcome(
    pool: PoolHarness, emulator: EmulatorProcess, expected: dict[int, str], *, extra_calls: int
) -> dict[str, Any]:
    """Every document done once with text, no duplicate write, quota kept, extra calls bounded."""
    rows = pool.rows()
    counts = pool.status_counts()
    assert counts == {DONE: len(expected)}, counts
    assert all(r["file_content"] for r in rows), "a document completed without text"
    dups = duplicate_writes(pool.dsn)
    assert dups == 0, f"{dups} result(s) written more than once"
    stats = emulator.stats()
    assert not stats["window_exceeded"], stats["window"]
    calls = sum(stats["documents"].values())
    extra = calls - len(expected)
    assert len(stats["documents"]) == len(expected), "the emulator did not see every document"
    assert extra <= extra_calls, (
        f"{extra} extra Gemini call(s), at most {extra_calls} allowed (one per interrupted job)"
    )
    return {"duplicates": dups, "extra": extra, "stats": stats}


def first_new_completion(dsn: str, since_epoch: float) -> float | None:
    """Epoch seconds at which the first document claimed after `since_epoch` was completed."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM min(completed_at)) FROM extraction_queue "
            "WHERE status_id = 5 AND claimed_at > to_timestamp(%s)",
            (since_epoch,),
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def recovery_after(dsn: str, fault_epoch: float, timeout: float) -> float:
    """Seconds from the fault until a document claimed after it was done (the pool works again)."""
    done = wait_until(
        lambda: first_new_completion(dsn, fault_epoch),
        timeout,
        message="a document claimed after the fault to complete",
    )
    return float(done) - fault_epoch
