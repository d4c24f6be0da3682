"""`errors` and `requeue` on real PostgreSQL, over both transports (direct and Supabase)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.config import Settings, load_settings
from control_plane.console.failed_documents import UsageError, run_errors, run_requeue
from control_plane.queue.failures import RequeueFilter
from tests.support import queue_fixtures
from tests.support.queue_fixtures import StoreCase, add_ready, sql

pytestmark = pytest.mark.integration

queue_dsn = queue_fixtures.queue_dsn
store_case = queue_fixtures.store_case
ROOT = Path(__file__).resolve().parents[2]
LEASE = 60_000


def fail_for_real(case: StoreCase, source: str, message: str, count: int) -> list[int]:
    """Documents that reach ERREUR the way workers put them there (claim, start, fail)."""
    add_ready(case.dsn, count, source=source, prefix=f"{source}-{message[:6]}")
    docs = case.store.claim(source, count, "w1", LEASE)
    assert len(docs) == count
    for d in docs:
        delivery = case.store.start(d.id, d.lease_token, "w1", LEASE, 3)
        assert delivery is not None
        assert case.store.fail(d.id, delivery.lease_token, message, permanent=True, max_attempts=3)
    return sorted(d.id for d in docs)


def table(dsn: str) -> list[tuple[Any, ...]]:
    return sql(dsn, "SELECT * FROM extraction_queue ORDER BY id")


@pytest.fixture
def settings_for(
    store_case: StoreCase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Settings]:
    """Settings whose one environment (dev) is the store case's database, same transport."""
    for name in list(os.environ):
        if name.startswith(("DEV_", "STAGING_", "PROD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    if store_case.endpoint is None:
        monkeypatch.setenv("DEV_DATABASE_URL", store_case.dsn)
    else:
        monkeypatch.setenv("DEV_SUPABASE_URL", store_case.endpoint.url)
        monkeypatch.setenv("DEV_SUPABASE_SERVICE_KEY", store_case.endpoint.service_key)
    yield load_settings()


def test_errors_groups_by_reason_per_type_with_counts_dates_and_samples(
    store_case: StoreCase, settings_for: Settings
) -> None:
    sql(store_case.dsn, "TRUNCATE ocr_error_history")
    too_big = fail_for_real(store_case, "acte", "document too large: 63 MB", 3)
    blocked = fail_for_real(store_case, "index", "blocked by safety filter", 7)
    fail_for_real(store_case, "acte", "blocked by safety filter", 1)
    add_ready(store_case.dsn, 2, source="index")  # not errors

    groups = {(g.document_source, g.reason): g for g in store_case.store.errors(5)}  # type: ignore[attr-defined]
    assert set(groups) == {
        ("acte", "document too large: 63 MB"),
        ("index", "blocked by safety filter"),
        ("acte", "blocked by safety filter"),
    }
    big = groups[("acte", "document too large: 63 MB")]
    assert big.documents == 3 and list(big.sample_ids) == too_big
    safety = groups[("index", "blocked by safety filter")]
    assert safety.documents == 7 and list(safety.sample_ids) == blocked[:5], "5 samples"
    assert safety.oldest is not None and safety.newest is not None
    assert safety.oldest <= safety.newest

    out = io.StringIO()
    assert run_errors(settings_for, env=None, document_type=None, as_json=False, out=out) == 0
    text = out.getvalue()
    assert "Documents in ERREUR (status 4): 11" in text
    assert "dev / index: 7" in text and "dev / acte: 4" in text
    assert "blocked by safety filter" in text and "document too large: 63 MB" in text
    assert f"ids {', '.join(map(str, blocked[:5]))}, …" in text

    only_acte = io.StringIO()
    run_errors(settings_for, env="dev", document_type="acte", as_json=True, out=only_acte)
    assert '"document_source": "index"' not in only_acte.getvalue()
    assert only_acte.getvalue().count('"document_source": "acte"') == 2


def test_requeue_dry_run_changes_nothing(store_case: StoreCase, settings_for: Settings) -> None:
    failed = fail_for_real(store_case, "index", "Gemini 400: invalid argument", 4)
    sql(store_case.dsn, "TRUNCATE ocr_error_history")
    before = table(store_case.dsn)
    out = io.StringIO()
    code = run_requeue(
        settings_for,
        env=None,
        document_type="index",
        reason="gemini 400",
        ids=None,
        everything=False,
        apply=False,
        out=out,
    )
    assert code == 0
    assert table(store_case.dsn) == before, "a dry run wrote to the queue"
    assert sql(store_case.dsn, "SELECT count(*) FROM ocr_error_history") == [(0,)]
    text = out.getvalue()
    assert "Would requeue (dry run, nothing changed): 4 document(s)" in text
    for doc_id in failed:
        assert f" {doc_id}  index" in text
    assert "--yes" in text


def test_requeue_applies_resets_attempts_and_keeps_the_previous_error(
    store_case: StoreCase, settings_for: Settings
) -> None:
    sql(store_case.dsn, "TRUNCATE ocr_error_history")
    wanted = fail_for_real(store_case, "index", "Gemini 400: invalid argument", 3)
    other_reason = fail_for_real(store_case, "index", "corrupt PDF", 2)
    other_type = fail_for_real(store_case, "acte", "Gemini 400: invalid argument", 2)
    # A legacy row of an unknown type stands in ERREUR; it cannot go back to ready.
    sql(
        store_case.dsn,
        "INSERT INTO extraction_queue (document_source, storage_path, status_id, error_message)"
        " VALUES ('registre', 'x.pdf', 4, 'Gemini 400: unknown document_source')",
    )
    out = io.StringIO()
    code = run_requeue(
        settings_for,
        env="dev",
        document_type="index",
        reason="GEMINI 400",
        ids=None,
        everything=False,
        apply=True,
        out=out,
    )
    assert code == 0
    assert "Requeued: 3 document(s)" in out.getvalue()
    rows = {
        r[0]: r[1:]
        for r in sql(
            store_case.dsn,
            "SELECT id, status_id, attempts, error_message, worker_id, lease_token"
            " FROM extraction_queue",
        )
    }
    for doc_id in wanted:
        assert rows[doc_id] == (3, 0, None, None, None), rows[doc_id]
    for doc_id in other_reason + other_type:
        assert rows[doc_id][0] == 4, "a document outside the filter was requeued"
    history = sql(
        store_case.dsn,
        "SELECT document_id, document_source, error_message, attempts, worker_id, requeued_by"
        " FROM ocr_error_history ORDER BY document_id",
    )
    assert [h[0] for h in history] == wanted
    for h in history:
        assert h[1:5] == ("index", "Gemini 400: invalid argument", 1, "w1")
        assert h[5] and ":" in h[5]
    # Ready again for real: the next claim takes them.
    claimed = store_case.store.claim("index", 10, "w2", LEASE)
    assert sorted(d.id for d in claimed) == wanted
    assert all(d.attempts == 0 for d in claimed), "attempts started again from zero"
    # A second apply finds nothing left to move.
    again = io.StringIO()
    run_requeue(
        settings_for,
        env=None,
        document_type="index",
        reason="gemini 400",
        ids=None,
        everything=False,
        apply=True,
        out=again,
    )
    assert "Requeued: 0 document(s)" in again.getvalue()


def test_requeue_by_ids(store_case: StoreCase) -> None:
    failed = fail_for_real(store_case, "acte", "timeout", 4)
    chosen = (failed[0], failed[2])
    dry = store_case.store.requeue(  # type: ignore[attr-defined]
        RequeueFilter(ids=chosen), apply=False, requeued_by="t"
    )
    assert [r.id for r in dry] == list(chosen)
    done = store_case.store.requeue(  # type: ignore[attr-defined]
        RequeueFilter(ids=chosen), apply=True, requeued_by="t"
    )
    assert [r.id for r in done] == list(chosen)
    status = dict(sql(store_case.dsn, "SELECT id, status_id FROM extraction_queue"))
    assert [status[i] for i in failed] == [3, 4, 3, 4]


def test_requeue_refuses_no_filter_and_unknown_environment(settings_for: Settings) -> None:
    with pytest.raises(UsageError, match="needs a filter"):
        run_requeue(
            settings_for,
            env=None,
            document_type=None,
            reason=None,
            ids=None,
            everything=False,
            apply=False,
            out=io.StringIO(),
        )
    with pytest.raises(UsageError, match="not a configured environment"):
        run_errors(settings_for, env="prod", document_type=None, as_json=False)


def test_cli_errors_and_requeue_dry_run(queue_dsn: str, tmp_path: Path) -> None:
    sql(queue_dsn, "TRUNCATE extraction_queue RESTART IDENTITY")
    sql(
        queue_dsn,
        "INSERT INTO extraction_queue (document_source, storage_path, status_id, error_message,"
        " attempts) VALUES ('index', 'a.pdf', 4, 'empty answer from Gemini', 3)",
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEV_", "STAGING_", "PROD_", "OCR_", "GEMINI_", "REDIS_"))
    }
    env["DEV_DATABASE_URL"] = queue_dsn
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "scheduler.py"), *a],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    errors = run("errors")
    assert errors.returncode == 0, errors.stderr
    assert "empty answer from Gemini" in errors.stdout
    dry = run("requeue", "--reason", "empty answer")
    assert dry.returncode == 0, dry.stderr
    assert "Would requeue (dry run, nothing changed): 1 document(s)" in dry.stdout
    assert sql(queue_dsn, "SELECT status_id FROM extraction_queue") == [(4,)]
    bare = run("requeue")
    assert bare.returncode == 2 and "needs a filter" in bare.stderr
    applied = run("requeue", "--type", "index", "--yes")
    assert applied.returncode == 0 and "Requeued: 1 document(s)" in applied.stdout
    assert sql(queue_dsn, "SELECT status_id, attempts FROM extraction_queue") == [(3, 0)]
