"""Per-process worker state and the middleware that keeps it alive.

One `WorkerRuntime` per `dramatiq` worker process: the Redis client, the pool,
the limiter, the OCR engine, the queue stores. The `OcrRuntime` middleware
builds it at process boot and runs a heartbeat thread that, independently of
any Gemini call in progress:

- heartbeats every worker thread into `gemini:workers` (idle or busy, with the
  document it works on);
- renews the pool slot of every running job (slot TTL);
- renews the database lease of every running job well before it lapses.

SIGINT/SIGTERM set `stop_event`: jobs waiting on the limiter or for a slot give
their document back to ready (no attempt counted) and the worker exits.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from control_plane.breakers import Breakers
from control_plane.config import Settings
from control_plane.dispatch import EnqueuedSet
from control_plane.errors import OcrPoolError
from control_plane.gemini.engine import GeminiOcrEngine
from control_plane.keys import Keys
from control_plane.logs import log_event
from control_plane.pool import SlotLease, WorkerPool
from control_plane.queue.documents import DocumentFetcher
from control_plane.queue.environments import Environments
from control_plane.redis_conn import redis_client
from control_plane.scripts import check_scripting
from control_plane.workers import WorkerRegistry


@dataclass
class ActiveJob:
    """A document a thread is working on: what the heartbeat must keep alive."""

    environment: str
    doc_id: int
    lease_token: str
    mode: str
    slot: SlotLease | None = None
    lease_renewed_at: float = field(default_factory=time.monotonic)
    lease_lost: bool = False

    @property
    def ref(self) -> str:
        return f"{self.environment}/{self.doc_id}"


class WorkerRuntime:
    """Everything a worker process shares between its threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.client = redis_client(settings.redis_url.get_secret_value())
        self.keys = Keys(prefix=settings.ocr_redis_prefix)
        self.pool = WorkerPool.from_settings(self.client, settings, self.keys)
        self.registry = WorkerRegistry(self.client, self.keys)
        self.enqueued = EnqueuedSet(self.client, self.keys)
        self.environments = Environments.from_settings(settings)
        self.fetcher = DocumentFetcher(settings, self.environments)
        self.engine = GeminiOcrEngine.from_settings(settings, self.client, self.keys)
        self.breakers = Breakers(self.client, self.keys)  # issue 11: document hosts
        self.stop_event = threading.Event()
        self._jobs: dict[int, ActiveJob | None] = {}  # thread ident -> job (None = idle)
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._closed = threading.Event()

    def boot_check(self) -> None:
        """Refuse to boot on a Redis that answers PING but will not run our scripts (an ACL
        user without +@scripting): every message would fail later."""
        check_scripting(self.client)

    # --- thread bookkeeping ---

    def worker_id(self, ident: int | None = None) -> str:
        """`host-pid-tN`: one registry entry per worker thread."""
        ident = threading.get_ident() if ident is None else ident
        return f"{self.host}-{self.pid}-t{ident % 100_000}"

    def thread_started(self) -> None:
        with self._lock:
            self._jobs[threading.get_ident()] = None

    def thread_stopped(self) -> None:
        with self._lock:
            self._jobs.pop(threading.get_ident(), None)
        self.registry.remove(self.worker_id())

    def track(self, job: ActiveJob | None) -> None:
        with self._lock:
            self._jobs[threading.get_ident()] = job
        self._beat_one(threading.get_ident(), job)

    # --- heartbeat ---

    def start_heartbeat(self) -> None:
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="ocr-heartbeat", daemon=True
        )
        self._heartbeat.start()

    def _heartbeat_loop(self) -> None:
        interval = self.settings.ocr_heartbeat_interval_ms / 1000
        while not self._closed.wait(interval):
            try:
                self.beat()
            except Exception as exc:  # the heartbeat must outlive outages
                log_event(
                    "worker.heartbeat_failed",
                    "heartbeat failed",
                    level="WARNING",
                    error=type(exc).__name__,
                )

    def beat(self) -> None:
        """Heartbeat every thread; renew slots and leases of running jobs."""
        with self._lock:
            jobs = list(self._jobs.items())
        lease_ms = self.settings.ocr_lease_ms
        for ident, job in jobs:
            self._beat_one(ident, job)
            if job is None:
                continue
            if job.slot is not None and not self.pool.renew_slot(job.slot):
                log_event(
                    "worker.slot_lost",
                    "slot lease lapsed; re-taken by the pool",
                    level="WARNING",
                    document=job.ref,
                    slot=job.slot.slot_id,
                )
            if time.monotonic() - job.lease_renewed_at >= lease_ms / 4000:
                self._renew_lease(job)

    def _renew_lease(self, job: ActiveJob) -> None:
        try:
            ok = self.environments.store(job.environment).renew(
                job.doc_id, job.lease_token, self.settings.ocr_lease_ms
            )
        except OcrPoolError as exc:
            log_event(
                "worker.lease_renew_failed",
                "lease not renewed (will retry)",
                level="WARNING",
                document=job.ref,
                error=type(exc).__name__,
            )
            return
        job.lease_renewed_at = time.monotonic()
        if not ok and not job.lease_lost:
            job.lease_lost = True
            log_event(
                "worker.lease_lost",
                "lease was taken over; the result will not be written",
                level="WARNING",
                document=job.ref,
            )

    def _beat_one(self, ident: int, job: ActiveJob | None) -> None:
        self.registry.heartbeat(
            self.worker_id(ident),
            host=self.host,
            pid=self.pid,
            mode=job.mode if job else None,
            document=job.ref if job else None,
        )

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            idents = list(self._jobs)
            self._jobs.clear()
        for ident in idents:
            self.registry.remove(self.worker_id(ident))
        self.environments.close()


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """This process's runtime (built at boot by the middleware, or on first use)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from control_plane.config import load_settings

            _runtime = WorkerRuntime(load_settings())
        return _runtime


class OcrRuntime(Middleware):
    """Builds the runtime at boot, heartbeats, and turns shutdown into `stop_event`."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # A worker whose boot failed must not take messages (round 1 booted on, without
        # its runtime, and failed every message): one line naming the variable, exit 3.
        # SystemExit passes through dramatiq's emit_after, which swallows Exceptions.
        from control_plane.start_errors import start_error_line, start_error_types

        try:
            rt = runtime()
            rt.boot_check()
        except start_error_types() as exc:
            print(f"configuration error: {start_error_line(exc)}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None
        rt.start_heartbeat()
        log_event("worker.boot", "worker process ready", host=rt.host, pid=rt.pid)

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        runtime().thread_started()

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        runtime().thread_stopped()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        rt = runtime()
        rt.stop_event.set()
        log_event(
            "worker.stopping", "finishing current jobs; waiting ones go back to ready", pid=rt.pid
        )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        runtime().close()
        log_event("worker.stopped", "worker process stopped cleanly")
