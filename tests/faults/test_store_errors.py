"""Permanent store errors inside a job end the document with the real cause (issue 12).

Another component's triggers on the shared table refuse some of the pool's updates, the
way a legacy column or rule would: the start of one document, the result of another
("value too long"), and an error_message longer than 50 characters for a third. Each such document
ends in ERREUR after one attempt with the database's own reason in error_message; none
is left leased to end as "lease expired", and the other documents complete.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from tests.faults.conftest import FAULT_ENV
from tests.support import fault_fixtures
from tests.support.emulator import EmulatorProcess
from tests.support.fault_fixtures import DONE, ERROR, threads_heartbeating
from tests.support.pool import PoolHarness, wait_until

fx_emulator = fault_fixtures.fx_emulator
fx_pool = fault_fixtures.fx_pool
pytestmark = pytest.mark.faults
THREADS = 4

TRIGGERS = """
CREATE FUNCTION legacy_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.storage_path LIKE '%start-refused%' AND NEW.started_at IS NOT NULL
       AND OLD.started_at IS NULL THEN
        RAISE EXCEPTION 'legacy rule: rows of this batch are frozen' USING ERRCODE = 'P0001';
    END IF;
    IF NEW.storage_path LIKE '%result-refused%' AND NEW.status_id = 5 THEN
        RAISE EXCEPTION 'value too long for type character varying(20)'
            USING ERRCODE = '22001';
    END IF;
    IF NEW.storage_path LIKE '%gone.pdf' AND length(NEW.error_message) > 50 THEN
        RAISE EXCEPTION 'error_message over 50 characters' USING ERRCODE = '22001';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER legacy_rules BEFORE UPDATE ON extraction_queue
    FOR EACH ROW EXECUTE FUNCTION legacy_rules();
"""


def test_permanent_store_errors_end_the_document_with_the_cause(
    fx_pool: PoolHarness, fx_emulator: EmulatorProcess
) -> None:
    good = fx_pool.seed(index=4, acte=2)
    docs = fx_pool.docs_dir
    with psycopg.connect(fx_pool.dsn, autocommit=True) as conn:
        conn.execute(TRIGGERS.encode())
        ids: dict[str, int] = {}
        sample = next(p for p in docs.iterdir() if p.suffix == ".pdf")
        for name in ("start-refused", "result-refused"):
            target = docs / f"{name}.pdf"
            target.write_bytes(sample.read_bytes())
            row = conn.execute(
                "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
                " VALUES ('index', %s, 3) RETURNING id",
                (target.as_uri(),),
            ).fetchone()
            assert row is not None
            ids[name] = int(row[0])
        missing = docs / ("a-very-long-directory-name-for-the-message" * 2) / "gone.pdf"
        row = conn.execute(
            "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
            " VALUES ('acte', %s, 3) RETURNING id",
            (missing.as_uri(),),
        ).fetchone()
        assert row is not None
        ids["long message"] = int(row[0])

    scheduler = fx_pool.scheduler(**FAULT_ENV)
    workers = fx_pool.workers(processes=1, threads=THREADS, **FAULT_ENV)
    total = len(good) + len(ids)
    wait_until(
        lambda: sum(fx_pool.status_counts().get(s, 0) for s in (DONE, ERROR)) == total,
        90,
        message=lambda: f"{fx_pool.status_counts()}\n{workers.log()[-3000:]}",
    )
    rows: dict[int, dict[str, Any]] = {r["id"]: r for r in fx_pool.rows()}
    expected = {
        "start-refused": r"^could not start: dev: P0001: legacy rule: rows of this batch are",
        "result-refused": r"^OCR done but the result could not be saved: dev: 22001: value",
        "long message": r"^file not found: .*\.\.\.$",
    }
    for name, pattern in expected.items():
        row = rows[ids[name]]
        assert row["status_id"] == ERROR, (name, row)
        assert re.match(pattern, row["error_message"] or ""), (name, row["error_message"])
        # Attempts count starts: a refused start never counted one; the others started once.
        expected = 0 if name == "start-refused" else 1
        assert row["attempts"] == expected, f"{name}: ended at once, not redone"
        assert "lease expired" not in (row["error_message"] or "")
    for doc_id in good:
        assert rows[doc_id]["status_id"] == DONE
    log = workers.log()
    assert "job.store_error" in log and "job.fail_refused" in log
    assert "Traceback" not in log, log[-3000:]
    assert threads_heartbeating(fx_pool, THREADS) and workers.alive()
    assert workers.stop() == 0 and scheduler.stop() == 0
