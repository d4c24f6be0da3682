"""A whole pool for end-to-end tests: real processes on real services.

`PoolHarness` owns one throwaway database (schema applied), one Redis key
prefix and Dramatiq namespace, a documents directory and a Gemini emulator;
it starts `python scheduler.py` and `dramatiq actors` as subprocesses with the
environment a user would set, and reads the outcome from the database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from control_plane.samples import sample_document

ROOT = Path(__file__).resolve().parents[2]
TEST_API_KEY = "test-gemini-key-Zq81xT"


@dataclass
class Proc:
    """A started subprocess with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int, *, group: bool = False) -> None:
        """Signal the process (as a supervisor would), or its whole process group."""
        if self.alive():
            if group:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.send(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL, group=True)
            self.popen.wait(10)
            raise AssertionError(
                f"{self.name} did not stop within {timeout}s:\n{self.log()[-3000:]}"
            ) from None


@dataclass
class PoolHarness:
    dsn: str
    redis_url: str
    emulator_url: str
    workdir: Path
    settings_env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"e2e:{tag}:"
        self.namespace = f"e2e-{tag}"
        self.docs_dir = self.workdir / "documents"
        self.docs_dir.mkdir(parents=True, exist_ok=True)

    # --- environment ---

    def env(self, **overrides: Any) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("OCR_", "GEMINI_", "DEV_", "STAGING_", "PROD_", "SERVER_", "REDIS_")
            )
        }
        base.update(
            {
                "DEV_DATABASE_URL": self.dsn,
                "REDIS_URL": self.redis_url,
                "OCR_REDIS_PREFIX": self.prefix,
                "OCR_DRAMATIQ_NAMESPACE": self.namespace,
                "GEMINI_BASE_URL": self.emulator_url,
                "GEMINI_API_KEY": TEST_API_KEY,
                "OCR_LOCAL_DOCUMENTS_DIR": str(self.docs_dir),
                # Test servers for http documents listen on 127.0.0.1 (refused by default).
                "OCR_DOCUMENT_ALLOWED_HOSTS": "127.0.0.1",
                "OCR_SCHEDULER_METRICS_PORT": "0",
                "OCR_WORKER_METRICS_PORT": "0",
                "OCR_REBALANCE_INTERVAL_MS": "1000",
                "OCR_FEED_INTERVAL_MS": "200",
                "OCR_STATUS_INTERVAL_MS": "5000",
                "OCR_HEARTBEAT_INTERVAL_MS": "500",
                "OCR_SLOT_TTL_MS": "5000",
                "OCR_LEASE_MS": "20000",
                # Short test windows, short margin (the emulator runs a little above our limit).
                "GEMINI_RATE_MARGIN_MS": "150",
                "OCR_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(self.settings_env)
        base.update({k: str(v) for k, v in overrides.items()})
        return base

    # --- processes ---

    def start(self, name: str, argv: list[str], **env: Any) -> Proc:
        log_path = self.workdir / f"{name}-{len(self.procs)}.log"
        handle = log_path.open("wb")
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env(**env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def scheduler(self, *args: str, **env: Any) -> Proc:
        return self.start("scheduler", [sys.executable, "scheduler.py", *args], **env)

    def workers(self, processes: int = 1, threads: int = 4, **env: Any) -> Proc:
        return self.start(
            "workers",
            [
                sys.executable,
                "-m",
                "dramatiq",
                "actors",
                "-p",
                str(processes),
                "-t",
                str(threads),
                "--worker-shutdown-timeout",
                "60000",
            ],
            **env,
        )

    def run(self, *args: str, timeout: float = 60, **env: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "scheduler.py", *args],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                with contextlib.suppress(AssertionError):
                    proc.stop(signal.SIGTERM, timeout=30)

    # --- documents ---

    def seed(
        self, index: int, acte: int, start: int = 1, pages: int | None = None
    ) -> dict[int, str]:
        """Queue sample documents; returns id -> expected text."""
        expected: dict[int, str] = {}
        with psycopg.connect(self.dsn) as conn:
            for source, count in (("index", index), ("acte", acte)):
                for n in range(start, start + count):
                    doc = sample_document(source, n, pages)
                    path = self.docs_dir / f"{doc.name}.pdf"
                    path.write_bytes(doc.pdf)
                    row = conn.execute(
                        "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
                        "VALUES (%s, %s, 3) RETURNING id",
                        (source, path.as_uri()),
                    ).fetchone()
                    assert row is not None
                    expected[int(row[0])] = doc.text
        return expected

    def status_counts(self) -> dict[int, int]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT status_id, count(*) FROM extraction_queue GROUP BY status_id"
            ).fetchall()
        return {int(s): int(n) for s, n in rows}

    def rows(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn) as conn:
            cur = conn.execute(
                "SELECT id, document_source, status_id, file_content, error_message, attempts "
                "FROM extraction_queue ORDER BY id"
            )
            names = [d.name for d in cur.description or []]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def cleanup_redis(self) -> None:
        client = self.redis()
        try:
            for pattern in (f"{self.prefix}*", f"{self.namespace}:*"):
                for key in client.scan_iter(match=pattern, count=1000):
                    client.delete(key)
        finally:
            client.close()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    *,
    interval: float = 0.25,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll `predicate` until truthy; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


@contextlib.contextmanager
def pool_harness(
    dsn: str, redis_url: str, emulator_url: str, workdir: Path
) -> Iterator[PoolHarness]:
    harness = PoolHarness(dsn, redis_url, emulator_url, workdir)
    try:
        yield harness
    finally:
        harness.stop_all()
        harness.cleanup_redis()


# --- the quota every multi-process suite runs under ------------------------------------
# A 2 s window so a run sees many windows; the pool's limiter a little under the
# emulator's quota (grants leave Redis and reach the emulator a few ms apart, as with
# the real API).
WINDOW_MS = 2000
POOL_RPM, POOL_TPM = 30, 60_000
EMULATOR_RPM, EMULATOR_TPM = 32, 64_000
QUOTA_ENV = {
    "GEMINI_RATE_WINDOW_MS": str(WINDOW_MS),
    "GEMINI_RPM_LIMIT": str(POOL_RPM),
    "GEMINI_TPM_LIMIT": str(POOL_TPM),
}


def quota_emulator(**config: Any) -> Any:
    """The emulator with the suites' quota (a little above the pool's) and `config`."""
    from tests.support.emulator import start_emulator

    return start_emulator(
        api_key=TEST_API_KEY,
        rpm_limit=EMULATOR_RPM,
        tpm_limit=EMULATOR_TPM,
        window_s=WINDOW_MS / 1000,
        **config,
    )


@contextlib.contextmanager
def fresh_pool(
    dsn: str, redis_url: str, emulator_url: str, workdir: Path, **env: str
) -> Iterator[PoolHarness]:
    """A harness on `dsn` (schema applied) under the suites' quota, plus `env`."""
    from control_plane.queue.migrate import apply_schema

    apply_schema(dsn)
    with pool_harness(dsn, redis_url, emulator_url, workdir) as harness:
        harness.settings_env.update({**QUOTA_ENV, **env})
        yield harness
