"""Bad configuration refused at start with one clear line; secrets never printed.

Every command a user runs (`python scheduler.py`, `python scheduler.py status`,
`dramatiq actors`) must exit non-zero with exactly one `configuration error:` line
naming the variable (dramatiq adds its own boot/shutdown lines around it), never a
traceback, never the rejected value. A whole pool run with recognizable secrets
(Gemini key, Redis password, database password, Supabase service key) must not show
any of them in any output nor in Redis.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
import redis

from control_plane.queue.migrate import apply_schema
from control_plane.samples import sample_document
from tests.faults.checks import install_audit
from tests.support import services
from tests.support.emulator import start_emulator
from tests.support.pool import ROOT, PoolHarness, pool_harness, wait_until
from tests.support.redis_server import free_port, private_redis
from tests.support.supabase_endpoint import supabase_endpoint

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

SCHEDULER = [sys.executable, "scheduler.py"]
STATUS = [sys.executable, "scheduler.py", "status"]
WORKERS = [sys.executable, "-m", "dramatiq", "actors", "-p", "1", "-t", "1"]
COMMANDS = {"scheduler": SCHEDULER, "status": STATUS, "dramatiq": WORKERS}
REJECTED = "Zr9-REJECTED-VALUE"  # a value that must never be echoed back
ALL = ("scheduler", "status", "dramatiq")

# variable, bad value (None: unset), what the one line must hold, commands to try
BAD_SETTINGS: list[tuple[str, str | None, tuple[str, ...], tuple[str, ...]]] = [
    ("OCR_WORKER_POOL_SIZE", "1", ("OCR_WORKER_POOL_SIZE", "greater than or equal to 2"), ALL),
    ("OCR_LEASE_MS", REJECTED, ("OCR_LEASE_MS", "valid integer"), ALL),
    (
        "OCR_MIN_INDEX_WORKERS",
        "9",
        ("OCR_MIN_INDEX_WORKERS=9 is above OCR_WORKER_POOL_SIZE=4",),
        ("scheduler", "dramatiq"),
    ),
    (
        "REDIS_URL",
        f"http://{REJECTED}",
        ("REDIS_URL must start with redis://",),
        ("scheduler", "dramatiq"),
    ),
    (
        "SERVER_RESERVE_CPU_PERCENT",
        "150",
        ("SERVER_RESERVE_CPU_PERCENT", "less than 100"),
        ("scheduler", "status"),
    ),
    (
        "GEMINI_TEMPERATURE",
        REJECTED,
        ("GEMINI_TEMPERATURE", "valid number"),
        ("scheduler", "status"),
    ),
    ("OCR_LOG_JSON", REJECTED, ("OCR_LOG_JSON", "valid boolean"), ("scheduler", "dramatiq")),
    ("OCR_LOG_LEVEL", REJECTED, ("OCR_LOG_LEVEL", "trace|debug|info"), ALL),
    (
        "OCR_MAX_PAGES",
        "0",
        ("OCR_MAX_PAGES", "greater than or equal to 1"),
        ("scheduler", "status"),
    ),
    (
        "DEV_SUPABASE_URL",
        "http://127.0.0.1:9",
        ("DEV_SUPABASE_SERVICE_KEY is missing", "go together"),
        ALL,
    ),
    ("DEV_DATABASE_URL", None, ("no environment configured", "DEV_DATABASE_URL"), ALL),
    ("GEMINI_API_KEY", None, ("GEMINI_API_KEY: not set",), ("dramatiq",)),
    # issue 11: relations between settings and URL schemes
    (
        "OCR_HEARTBEAT_INTERVAL_MS",
        "60000",
        ("OCR_HEARTBEAT_INTERVAL_MS=60000 must be below OCR_SLOT_TTL_MS=30000",),
        ALL,
    ),
    ("OCR_LEASE_MS", "20000", ("OCR_SLOT_TTL_MS=30000 must be below OCR_LEASE_MS=20000",), ALL),
    (
        "OCR_JOB_TIME_LIMIT_MS",
        "1000",
        ("OCR_JOB_TIME_LIMIT_MS=1000 is below GEMINI_TIMEOUT_MS=300000",),
        ALL,
    ),
    ("OCR_ACTE_CPU", "9", ("OCR_ACTE_CPU=9 is above this host's CPU budget",), ALL),
    ("SERVER_MAX_RAM", "2", ("SERVER_MAX_RAM: the minimum slots",), ALL),
    ("GEMINI_BASE_URL", "127.0.0.1:8090", ("GEMINI_BASE_URL has no scheme",), ALL),
    ("DEV_DATABASE_URL", f"mysql://{REJECTED}@db/x", ("DEV_DATABASE_URL must start with",), ALL),
]
# DEV_SUPABASE_URL without a scheme (round 1: a traceback in the scheduler, a worker that
# booted without its runtime and failed every message).
SUPABASE_NO_SCHEME = {"DEV_SUPABASE_URL": "abc.supabase.co", "DEV_SUPABASE_SERVICE_KEY": "k" * 40}


def base_env(redis_url: str) -> dict[str, str]:
    """A valid configuration (nothing is started far enough to use it)."""
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OCR_", "GEMINI_", "DEV_", "STAGING_", "PROD_", "SERVER_", "REDIS_"))
    }
    env.update(
        {
            "DEV_DATABASE_URL": services.pg_admin_dsn(),
            "REDIS_URL": redis_url,
            "GEMINI_API_KEY": "test-key-not-used",
            "OCR_REDIS_PREFIX": f"cfg:{uuid.uuid4().hex[:8]}:",
            "OCR_SCHEDULER_METRICS_PORT": "0",
            "OCR_WORKER_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run(
    argv: list[str], env: dict[str, str], timeout: float = 40
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_refused(result: subprocess.CompletedProcess[str], *said: str) -> str:
    """Non-zero exit, exactly one `configuration error:` line holding `said`, no traceback."""
    lines = [ln for ln in result.stderr.splitlines() if "configuration error" in ln]
    assert result.returncode != 0, result
    assert len(lines) == 1, result.stderr
    assert all(part in lines[0] for part in said), lines[0]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert REJECTED not in result.stderr + result.stdout, "the rejected value was echoed"
    return lines[0]


def test_each_invalid_variable_is_refused_with_one_line_naming_it(redis_url: str) -> None:
    jobs = []
    for variable, value, said, commands in BAD_SETTINGS:
        env = base_env(redis_url)
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = value
        jobs += [(variable, said, name, env) for name in commands]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: run(COMMANDS[job[2]], job[3]), jobs))
    refused = []
    for (_variable, said, _name, _), result in zip(jobs, results, strict=True):
        refused.append(assert_refused(result, *said))
    assert len(refused) == len(jobs)


def test_a_supabase_url_without_scheme_is_refused_by_every_command(redis_url: str) -> None:
    env = {**base_env(redis_url), **SUPABASE_NO_SCHEME}
    env.pop("DEV_DATABASE_URL")
    for name, argv in COMMANDS.items():
        line = assert_refused(run(argv, env), "DEV_SUPABASE_URL has no scheme")
        assert "https://abc.supabase.co" in line, (name, line)


def test_unreachable_redis_is_refused_with_one_clear_line(redis_url: str) -> None:
    env = base_env(redis_url)
    env["REDIS_URL"] = f"redis://:{REJECTED}@127.0.0.1:{free_port()}/0"
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(
            zip(COMMANDS, pool.map(lambda argv: run(argv, env), COMMANDS.values()), strict=True)
        )
    for name, result in results.items():
        line = assert_refused(result, "REDIS_URL: cannot reach Redis at 127.0.0.1:")
        assert line.startswith("configuration error: "), (name, line)


# --- secrets -------------------------------------------------------------------------------


@pytest.fixture
def secret_role(
    pg_admin_dsn: str, pg_database_factory: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    """A fresh database and a login role with a password on it: (dsn with password, password)."""
    dsn = pg_database_factory("secrets")
    apply_schema(dsn)
    install_audit(dsn)
    role, password = f"ocr_secret_{uuid.uuid4().hex[:8]}", f"PGPASS-{uuid.uuid4().hex}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for what in ("TABLES", "SEQUENCES", "FUNCTIONS"):
            conn.execute(f"GRANT ALL ON ALL {what} IN SCHEMA public TO {role}")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(user=role, password=password)
    yield psycopg.conninfo.make_conninfo("", **params), password
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def redis_dump(client: redis.Redis, patterns: tuple[str, ...]) -> str:
    """Every key and value under `patterns`, as text."""
    out: list[str] = []
    for pattern in patterns:
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key)
            value: object
            if kind == "string":
                value = client.get(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = client.xrange(key)
            else:
                value = kind
            out.append(f"{key} {value!r}")
    return "\n".join(out)


def test_secrets_never_appear_in_any_output_nor_in_redis(
    secret_role: tuple[str, str], tmp_path: Path, report: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    dsn, pg_password = secret_role
    gemini_key = f"GEMKEY-{uuid.uuid4().hex}"
    redis_password = f"REDISPASS-{uuid.uuid4().hex}"
    service_key = f"SUPAKEY-{uuid.uuid4().hex}"
    secrets = {
        "GEMINI_API_KEY": gemini_key,
        "Redis password": redis_password,
        "database password": pg_password,
        "Supabase service key": service_key,
    }
    storage = tmp_path / "storage"
    (storage / "scans").mkdir(parents=True)
    (storage / "scans" / "deed.pdf").write_bytes(sample_document("acte", 77, 2).pdf)

    with (
        private_redis() as server,
        start_emulator(api_key=gemini_key, latency_ms=20, extra_args=["--verbose"]) as emu,
        supabase_endpoint(dsn, service_key=service_key, storage_dir=storage) as supabase,
    ):
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("requirepass", redis_password)
        admin.close()
        redis_url = f"redis://:{redis_password}@127.0.0.1:{server.port}/0"
        with pool_harness(dsn, redis_url, emu.url, tmp_path / "pool") as pool:
            pool.settings_env.update(
                {
                    "GEMINI_API_KEY": gemini_key,
                    "DEV_SUPABASE_URL": supabase.url,
                    "DEV_SUPABASE_SERVICE_KEY": service_key,
                    "OCR_LOG_LEVEL": "DEBUG",  # the most talkative the product gets
                }
            )
            outputs = run_pool_with_secrets(pool)
            outputs["redis keys and values"] = redis_dump(
                pool.redis(), (f"{pool.prefix}*", f"{pool.namespace}:*")
            )
            # A wrong Redis password and a wrong Gemini key must not echo the secret either.
            wrong = pool.run("status", REDIS_URL=f"redis://:{REJECTED}@127.0.0.1:{server.port}/0")
            assert wrong.returncode != 0
            assert "authentication" in wrong.stderr.lower() or "auth" in wrong.stderr.lower()
            outputs["status, wrong Redis password"] = wrong.stdout + wrong.stderr
        emu.process.terminate()
        emu.process.wait(10)
        outputs["emulator stdout"] = emu.process.stdout.read() if emu.process.stdout else ""
        # --verbose logs every request to stderr, inherited from this process: capfd holds it
        outputs["emulator stderr (request log)"] = capfd.readouterr().err
    assert supabase.requests > 0, "the Supabase key was used (Storage download)"
    for where, text in outputs.items():
        assert text or where == "emulator stdout", f"{where}: nothing captured"
        for name, secret in secrets.items():
            assert secret not in text, f"{name} appears in {where}"
        assert REJECTED not in text, f"the wrong password appears in {where}"
    report(
        fault="secrets in all output (4 secrets, 7 outputs)",
        documents_in=7,
        completed=7,
        notes="scheduler/workers logs, status, emulator stdout, Redis: no secret",
    )


def run_pool_with_secrets(pool: PoolHarness) -> dict[str, str]:
    """Queue documents (one in Supabase Storage), run the pool to the end, return all output."""
    pool.seed(index=4, acte=2)
    with psycopg.connect(pool.dsn) as conn:
        conn.execute(
            "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
            "VALUES ('acte', 'scans/deed.pdf', 3)"
        )
    scheduler = pool.scheduler()
    workers = pool.workers(processes=1, threads=2)
    wait_until(
        lambda: pool.status_counts() == {5: 7},
        60,
        message=lambda: f"all 7 done: {pool.status_counts()}\n{workers.log()[-2000:]}",
    )
    status = pool.run("status")
    assert status.returncode == 0, status.stderr
    assert workers.stop() == 0 and scheduler.stop() == 0
    return {
        "scheduler log": scheduler.log(),
        "workers log": workers.log(),
        "status output": status.stdout + status.stderr,
    }


# --- secrets in every URL form (issue 11) ----------------------------------------------------


def test_secrets_in_every_url_form_never_appear_and_library_lines_use_our_format(
    pg_admin_dsn: str,
    pg_database_factory: Callable[[str], str],
    tmp_path: Path,
    report: Any,
) -> None:
    """A Redis password holding `@` written as is in the URL (`redis://:pa@ss@host`), a
    database password given as `?password=` (percent-encoded `@` inside), and every
    library's log lines (DEBUG: APScheduler, psycopg_pool, dramatiq, redis, httpx...)."""
    dsn = pg_database_factory("secretforms")
    apply_schema(dsn)
    role = f"ocr_forms_{uuid.uuid4().hex[:8]}"
    pg_password = f"PG@FORM-{uuid.uuid4().hex}"
    redis_password = f"RE@DIS-{uuid.uuid4().hex}"
    gemini_key = f"GEMKEY-{uuid.uuid4().hex}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{pg_password}'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for what in ("TABLES", "SEQUENCES", "FUNCTIONS"):
            conn.execute(f"GRANT ALL ON ALL {what} IN SCHEMA public TO {role}")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    encoded = pg_password.replace("@", "%40")
    db_url = (
        f"postgresql://{role}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/"
        f"{params['dbname']}?password={encoded}"
    )
    try:
        with private_redis() as server, start_emulator(api_key=gemini_key, latency_ms=20) as emu:
            admin = redis.Redis(host="127.0.0.1", port=server.port)
            admin.config_set("requirepass", redis_password)
            admin.close()
            redis_url = f"redis://:{redis_password}@127.0.0.1:{server.port}/0"
            with pool_harness(dsn, redis_url, emu.url, tmp_path / "pool") as pool:
                # The pool's processes connect with the password-in-query URL; the test
                # seeds and counts through the owner's DSN (pool.dsn).
                pool.settings_env.update(
                    {
                        "DEV_DATABASE_URL": db_url,
                        "GEMINI_API_KEY": gemini_key,
                        "OCR_LOG_LEVEL": "DEBUG",
                    }
                )
                outputs = run_pool_with_forms(pool)
                wrong = pool.run(
                    "status", REDIS_URL=f"redis://127.0.0.1:{server.port}/0?password={REJECTED}"
                )
                assert wrong.returncode != 0
                outputs["status, wrong ?password="] = wrong.stdout + wrong.stderr
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
    secrets = [pg_password, encoded, redis_password, gemini_key, REJECTED]
    for secret in (pg_password, redis_password):  # and the parts around an "@"
        secrets.extend(part for part in secret.split("@") if len(part) > 8)
    for where, text in outputs.items():
        assert text, f"{where}: nothing captured"
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:6]}...) appears in {where}"
    # One stream: library lines carry their logger as action, in our format; only the
    # dramatiq master (which never imports our code) keeps its own few lines.
    scheduler_log, workers_log = outputs["scheduler log"], outputs["workers log"]
    assert " DEBUG " in scheduler_log and "apscheduler." in scheduler_log
    assert " DEBUG " in workers_log and " dramatiq.worker.Worker " in workers_log
    foreign = [
        ln
        for ln in (scheduler_log + workers_log).splitlines()
        if ln.startswith("[") and "[PID" in ln and "dramatiq.MainProcess" not in ln
    ]
    assert not foreign, foreign[:5]
    assert "dramatiq.WorkerProcess(0) Worker process is ready" in workers_log
    report(
        fault="secrets in every URL form (user:pass@ with @, ?password=)",
        documents_in=6,
        completed=6,
        notes="scheduler/workers DEBUG logs, status; library lines in our format",
    )


def run_pool_with_forms(pool: PoolHarness) -> dict[str, str]:
    """Queue documents, run the pool to the end, return all output."""
    pool.seed(index=4, acte=2)
    scheduler = pool.scheduler()
    workers = pool.workers(processes=1, threads=2)
    wait_until(
        lambda: pool.status_counts() == {5: 6},
        90,
        message=lambda: f"all 6 done: {pool.status_counts()}\n{workers.log()[-2000:]}",
    )
    status = pool.run("status")
    assert status.returncode == 0, status.stderr
    assert workers.stop() == 0 and scheduler.stop() == 0
    return {
        "scheduler log": scheduler.log(),
        "workers log": workers.log(),
        "status output": status.stdout + status.stderr,
    }


def test_a_redis_user_without_scripting_is_refused_at_start_by_every_process(
    redis_url: str,
) -> None:
    """PING works (so round 1 started), the Lua scripts do not: the scheduler refused with
    a traceback and the workers booted on and failed every message. Now: one line naming
    REDIS_URL, non-zero exit, no worker left taking messages."""
    with private_redis() as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.execute_command(
            "ACL", "SETUSER", "ocr", "on", ">Zr9-acl-pass", "~*", "&*", "+@all", "-@scripting"
        )
        admin.close()
        env = base_env(redis_url)
        env["REDIS_URL"] = f"redis://ocr:Zr9-acl-pass@127.0.0.1:{server.port}/0"
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = dict(
                zip(
                    COMMANDS,
                    pool.map(lambda argv: run(argv, env, timeout=60), COMMANDS.values()),
                    strict=True,
                )
            )
    for name, result in results.items():
        line = assert_refused(result, "REDIS_URL: the Redis user is not allowed")
        assert "Zr9-acl-pass" not in result.stdout + result.stderr, name
        assert line.startswith("configuration error: "), (name, line)
