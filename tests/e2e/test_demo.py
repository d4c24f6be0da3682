"""The first Quick start command: `python scheduler.py demo`, as a newcomer runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support.pool import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_runs_end_to_end_and_cleans_up(
    tmp_path: Path, redis_url: str, pg_admin_dsn: str
) -> None:
    summary_file = tmp_path / "summary.json"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "OCR_DEMO_PG_DSN": pg_admin_dsn,
    }
    result = subprocess.run(
        [
            sys.executable,
            "scheduler.py",
            "demo",
            "--index",
            "16",
            "--acte",
            "8",
            "--summary-json",
            str(summary_file),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    for needle in (
        "UNIFIED OCR WORKER POOL STARTING",
        "Started ocr-worker-1 (mode: ",
        "WORKER POOL STARTED SUCCESSFULLY",
        "done  24/24",
        "WORKER POOL STATUS",
        "Demo summary",
        "stopped workers",
        "stopped scheduler",
    ):
        assert needle in out, f"{needle!r} missing from the demo output:\n{out[-4000:]}"

    summary = json.loads(summary_file.read_text())
    assert summary["done"] == summary["total"] == 24
    assert summary["errors"] == 0
    assert summary["calls"] >= 24
    assert summary["responses_429"] == 0
    assert summary["quota_window_exceeded"] is False
    assert summary["prompt_tokens"] > 24 * 258
    # The metrics endpoints answered with the named series during the run.
    scheduler_series = set(summary["metrics"]["scheduler"])
    for series in (
        "ocr_allocation_slots",
        "ocr_queue_ready",
        "ocr_queue_in_flight",
        "ocr_slots_busy",
        "ocr_gemini_requests_window",
        "ocr_gemini_tokens_window",
        "ocr_gemini_rpm_limit",
        "ocr_capacity_cpu_budget",
        "ocr_documents_fed_total",
        "ocr_scheduler_leader",
        "ocr_scheduler_leader_epoch",
        "ocr_last_success_timestamp_seconds",
    ):
        assert series in scheduler_series, f"{series} not served: {sorted(scheduler_series)}"
    worker_series = set(summary["metrics"]["workers"])
    for series in (
        "dramatiq_messages_total",
        "dramatiq_message_duration_milliseconds_bucket",
        "ocr_gemini_call_seconds_bucket",
        "ocr_limiter_wait_seconds_bucket",
        "ocr_gemini_responses_total",
    ):
        assert series in worker_series, f"{series} not served: {sorted(worker_series)}"

    # Everything the demo started or created is gone (its own: other demos may be running
    # on the same servers).
    assert summary["database"].startswith("ocr_demo_")
    assert summary["redis_prefix"].startswith("demo:")
    with psycopg.connect(pg_admin_dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (summary["database"],)
        ).fetchone()
    assert left is not None and left[0] == 0, "the demo database was not dropped"
    client = redis.Redis.from_url(redis_url)
    own = list(client.scan_iter(match=f"{summary['redis_prefix']}*", count=1000))
    assert not own, "demo keys left in Redis"
    client.close()
