"""The real-world PDF corpus (tests/data/pdfs, issue 12) through the real pool.

Every file ends done, or in ERREUR with a precise reason (an encrypted PDF says so).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from tests.support.emulator import EmulatorProcess
from tests.support.pool import PoolHarness, wait_until

pytestmark = pytest.mark.e2e
CORPUS = Path(__file__).resolve().parents[1] / "data" / "pdfs"
DONE, ERROR = 5, 4
EXPECTED_ERRORS = {"encrypted_user_password.pdf": "encrypted PDF (a password is required)"}


def test_every_corpus_pdf_ends_done_or_with_a_precise_reason(
    pool: PoolHarness, emulator: EmulatorProcess
) -> None:
    files = sorted(CORPUS.glob("*.pdf"))
    assert len(files) >= 10, "the corpus is committed"
    ids: dict[int, str] = {}
    with psycopg.connect(pool.dsn, autocommit=True) as conn:
        for n, path in enumerate(files):
            target = pool.docs_dir / path.name
            shutil.copy(path, target)
            row = conn.execute(
                "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
                " VALUES (%s, %s, 3) RETURNING id",
                ("acte" if n % 2 else "index", target.as_uri()),
            ).fetchone()
            assert row is not None
            ids[int(row[0])] = path.name
    scheduler = pool.scheduler()
    workers = pool.workers(processes=1, threads=4)
    wait_until(
        lambda: sum(pool.status_counts().get(s, 0) for s in (DONE, ERROR)) == len(ids),
        120,
        message=lambda: f"{pool.status_counts()}\n{workers.log()[-3000:]}",
    )
    rows = {r["id"]: r for r in pool.rows()}
    outcome = {}
    for doc_id, name in ids.items():
        row = rows[doc_id]
        outcome[name] = (row["status_id"], row["error_message"])
        if name in EXPECTED_ERRORS:
            assert row["status_id"] == ERROR, (name, row["error_message"])
            assert row["error_message"] == EXPECTED_ERRORS[name]
            assert row["attempts"] == 1, "not retried"
        else:
            assert row["status_id"] == DONE, (name, row["error_message"])
            assert row["file_content"], name
    print("\n" + "\n".join(f"{n}: {s} {m or ''}" for n, (s, m) in sorted(outcome.items())))
    assert "Traceback" not in workers.log(), workers.log()[-3000:]
    assert workers.stop() == 0 and scheduler.stop() == 0
