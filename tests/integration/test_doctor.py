"""`python scheduler.py doctor` against real Redis, PostgreSQL and the Gemini emulator.

A healthy set-up passes every check (exit 0); each broken item gives its ✘ line
with the fix and a non-zero exit: Redis down, no key, a key the emulator refuses,
an unknown model, an environment unreachable (Postgres and Supabase), migrations
missing, no worker for a type, ready rows carrying a worker_id.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from control_plane.config import load_settings
from control_plane.console.doctor import run_doctor
from control_plane.keys import Keys
from control_plane.pool import WorkerPool
from control_plane.queue.migrate import apply_schema
from control_plane.scheduler.leader import LeaderLock
from control_plane.workers import WorkerRegistry
from tests.support.emulator import DEFAULT_TEST_KEY, EmulatorProcess, emulator_fixture
from tests.support.queue_fixtures import add_ready, sql
from tests.support.supabase_endpoint import supabase_endpoint

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

gemini = emulator_fixture(scope="module")


@pytest.fixture(scope="module")
def doctor_dsn(pg_database_factory: Callable[[str], str]) -> str:
    dsn = pg_database_factory("doctor")
    apply_schema(dsn)
    return dsn


@pytest.fixture
def healthy(
    doctor_dsn: str,
    redis_url: str,
    key_prefix: str,
    gemini: EmulatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[dict[str, str]]:
    """A working set-up: schema applied, a leader, 4 slots 2/2, 4 worker threads heartbeating."""
    gemini.configure(known_models=[])
    sql(doctor_dsn, "TRUNCATE extraction_queue RESTART IDENTITY")
    for name in list(os.environ):
        if name.startswith(("OCR_", "GEMINI_", "SERVER_", "REDIS_", "DEV_", "STAGING_", "PROD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    env = {
        "REDIS_URL": redis_url,
        "OCR_REDIS_PREFIX": key_prefix,
        "DEV_DATABASE_URL": doctor_dsn,
        "GEMINI_BASE_URL": gemini.url,
        "GEMINI_API_KEY": DEFAULT_TEST_KEY,
        "GEMINI_MODEL": "gemini-emulated-flash",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix=key_prefix)
    lock = LeaderLock(client, keys, "doctor-test:1:abc")
    assert lock.try_acquire()
    WorkerPool.from_settings(client, settings, keys).publish_allocation(
        {"index": 2, "acte": 2}, version=1, reason="test"
    )
    registry = WorkerRegistry(client, keys)
    for i in range(4):
        registry.heartbeat(
            f"host-a:1:{i}",
            host="host-a",
            pid=1,
            mode=None,
            document=None,
            clock_ms=_redis_ms(client),
            types=None,
        )
    add_ready(doctor_dsn, 3, source="index")
    add_ready(doctor_dsn, 2, source="acte")
    try:
        yield env
    finally:
        client.close()


def _redis_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def doctor() -> tuple[int, dict[str, dict[str, Any]], str]:
    """Run the doctor in-process: exit status, checks by name (JSON), and the text output."""
    as_json, text = io.StringIO(), io.StringIO()
    code = run_doctor(as_json=True, out=as_json)
    assert run_doctor(as_json=False, out=text) == code
    checks = {c["name"]: c for c in json.loads(as_json.getvalue())["checks"]}
    return code, checks, text.getvalue()


def failed(checks: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, c in checks.items() if c["status"] == "fail"]


def test_healthy_setup_passes_every_check(healthy: dict[str, str]) -> None:
    code, checks, text = doctor()
    assert code == 0, text
    assert failed(checks) == []
    for name in (
        "configuration",
        "Redis reachable",
        "Redis eviction policy",
        "Redis mode",
        "Gemini API key and model",
        "dev: reachable",
        "dev: migrations",
        "dev: table security",
        "dev: ready documents with a worker_id",
        "scheduler leader",
        "worker threads",
        "index documents can be taken",
        "acte documents can be taken",
        "host clocks vs Redis TIME",
        "Gemini RPM headroom",
        "CPU headroom",
        "RAM headroom",
        "Gemini cooldown",
    ):
        assert checks[name]["status"] == "ok", (name, checks.get(name), text)
    assert "✔ Redis reachable" in text and "✘" not in text
    assert DEFAULT_TEST_KEY not in text, "the key never reaches the output"
    # models.get costs no generation quota: the emulator saw no generateContent call.


def test_redis_down(healthy: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    code, checks, text = doctor()
    assert code != 0
    assert checks["Redis reachable"]["status"] == "fail"
    assert "✘ Redis reachable: cannot reach Redis at 127.0.0.1:1/0" in text
    assert "fix: start Redis (redis-cli ping must answer PONG)" in text
    assert checks["workers, clocks and headroom"]["status"] == "skip"


def test_no_gemini_key(healthy: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    code, checks, text = doctor()
    assert code != 0 and failed(checks) == ["Gemini API key and model"]
    assert "✘ Gemini API key and model: GEMINI_API_KEY is not set" in text
    assert "fix: set GEMINI_API_KEY" in text


def test_wrong_key_refused_by_the_emulator(
    healthy: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-not-the-right-key")
    code, checks, text = doctor()
    assert code != 0 and failed(checks) == ["Gemini API key and model"]
    assert "key refused (400)" in checks["Gemini API key and model"]["detail"]
    assert "API key not valid" in text and "AIza-not-the-right-key" not in text


def test_unknown_model(healthy: dict[str, str], gemini: EmulatorProcess) -> None:
    gemini.configure(known_models=["gemini-2.5-flash"])
    code, checks, _ = doctor()
    assert code != 0 and failed(checks) == ["Gemini API key and model"]
    assert "model gemini-emulated-flash not found" in checks["Gemini API key and model"]["detail"]
    assert "GEMINI_MODEL" in checks["Gemini API key and model"]["fix"]


def test_environment_unreachable(healthy: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV_DATABASE_URL", "postgresql://postgres:s3cr3tpw@127.0.0.1:1/ocr")
    code, checks, text = doctor()
    assert code != 0
    assert checks["dev: reachable"]["status"] == "fail"
    assert "cannot connect" in checks["dev: reachable"]["detail"]
    assert "fix: check *_DATABASE_URL" in text and "s3cr3tpw" not in text


def test_supabase_credentials_refused_and_migrations_missing(
    healthy: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    doctor_dsn: str,
    pg_database_factory: Callable[[str], str],
) -> None:
    monkeypatch.delenv("DEV_DATABASE_URL")
    with supabase_endpoint(doctor_dsn, service_key="the-real-service-key") as endpoint:
        monkeypatch.setenv("DEV_SUPABASE_URL", endpoint.url)
        monkeypatch.setenv("DEV_SUPABASE_SERVICE_KEY", "a-wrong-service-key")
        code, checks, _ = doctor()
        assert code != 0
        assert checks["dev: reachable"]["status"] == "fail"
        assert "credentials refused (HTTP 401)" in checks["dev: reachable"]["detail"]
        monkeypatch.setenv("DEV_SUPABASE_SERVICE_KEY", "the-real-service-key")
        code, checks, text = doctor()
        assert code == 0, text  # the same database through the Supabase transport is fine
    with supabase_endpoint(pg_database_factory("bare")) as bare:
        monkeypatch.setenv("DEV_SUPABASE_URL", bare.url)
        monkeypatch.setenv("DEV_SUPABASE_SERVICE_KEY", bare.service_key)
        code, checks, _ = doctor()
        assert code != 0 and checks["dev: migrations"]["status"] == "fail"
        assert "supabase db push" in checks["dev: migrations"]["fix"]


def test_migrations_missing(
    healthy: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    pg_database_factory: Callable[[str], str],
) -> None:
    partial = pg_database_factory("partial")
    sql(partial, "CREATE TABLE extraction_queue (id bigint, document_source text)")
    monkeypatch.setenv("DEV_DATABASE_URL", partial)
    code, checks, text = doctor()
    assert code != 0
    assert checks["dev: reachable"]["status"] == "ok"
    migrations = checks["dev: migrations"]
    assert migrations["status"] == "fail"
    for name in ("ocr_claim", "ocr_doctor", "ocr_requeue", "ocr_status", "ocr_error_history"):
        assert name in migrations["detail"], migrations
    assert "extraction_queue" not in migrations["detail"]
    assert "fix: python scheduler.py migrate" in text


def test_no_worker_for_a_type(healthy: dict[str, str], redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix=key_prefix)
    client.delete(keys.workers)
    registry = WorkerRegistry(client, keys)
    for i in range(4):  # dramatiq actors -Q ocr-index: nobody consumes ocr-acte
        registry.heartbeat(
            f"host-b:2:{i}",
            host="host-b",
            pid=2,
            mode=None,
            document=None,
            clock_ms=_redis_ms(client),
            types=["index"],
        )
    client.close()
    code, checks, text = doctor()
    assert code != 0 and failed(checks) == ["acte documents can be taken"]
    assert "no registered worker thread consumes the ocr-acte queue" in text
    assert "fix: start dramatiq actors (without -Q, or with -Q ocr-acte)" in text


def test_no_slot_of_a_mode(
    healthy: dict[str, str], redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCR_MIN_ACTE_WORKERS", "0")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    WorkerPool.from_settings(client, load_settings(), Keys(prefix=key_prefix)).publish_allocation(
        {"index": 4, "acte": 0}, version=2, reason="test"
    )
    client.close()
    code, checks, _ = doctor()
    assert code != 0 and failed(checks) == ["acte documents can be taken"]
    assert "no slot has mode acte" in checks["acte documents can be taken"]["detail"]
    assert "OCR_MIN_ACTE_WORKERS" in checks["acte documents can be taken"]["fix"]


def test_ready_rows_with_a_worker_id(healthy: dict[str, str], doctor_dsn: str) -> None:
    sql(
        doctor_dsn,
        "INSERT INTO extraction_queue (document_source, storage_path, status_id, worker_id)"
        " VALUES ('index', 'held.pdf', 3, 'node-worker-7'), ('acte', 'held2.pdf', 3, 'w')",
    )
    code, checks, text = doctor()
    assert code != 0 and failed(checks) == ["dev: ready documents with a worker_id"]
    assert "2 ready document(s) carry a worker_id (acte 1, index 1)" in text
    assert "SET worker_id = NULL WHERE status_id = 3" in text


def test_no_leader_and_thin_pool(healthy: dict[str, str], redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix=key_prefix)
    client.delete(keys.leader)
    client.hdel(keys.workers, "host-a:1:0", "host-a:1:1")
    client.close()
    code, checks, _ = doctor()
    assert code != 0 and sorted(failed(checks)) == ["scheduler leader", "worker threads"]
    assert "python scheduler.py" in checks["scheduler leader"]["fix"]


def test_cli_doctor_exit_status(healthy: dict[str, str], tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OCR_", "GEMINI_", "SERVER_", "REDIS_", "DEV_", "STAGING_", "PROD_"))
    }
    env.update(healthy)
    run = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "doctor"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout
    env["GEMINI_API_KEY"] = "wrong-key"
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "doctor", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    payload = json.loads(bad.stdout)
    assert payload["ok"] is False
    assert [c["name"] for c in payload["checks"] if c["status"] == "fail"] == [
        "Gemini API key and model"
    ]


def test_invalid_configuration(healthy: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_MIN_ACTE_WORKERS", "9")
    code, checks, text = doctor()
    assert code != 0 and list(checks) == ["configuration"]
    assert "✘ configuration: OCR_MIN_ACTE_WORKERS" in text
    assert "fix: set the variable it names" in text
