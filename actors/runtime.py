"""Per-process worker state and the middleware that keeps it alive.

One `WorkerRuntime` per `dramatiq` worker process: the Redis client, the pool,
the limiter, the OCR engine, the queue stores. The `OcrRuntime` middleware
builds it at process boot and starts heartbeat loops that run independently of
each other and of any Gemini call in progress, each on its own thread with its
own short timeouts, so a slow database cannot starve a slot renewal (issue 10):

- `ocr-heartbeat-slots`: renews the pool slot of every running job (Redis, a
  dedicated client with a short timeout);
- `ocr-heartbeat-leases-<env>`: renews the database lease of every running job
  of that environment well before it lapses (one loop per environment);
- `ocr-heartbeat-workers`: heartbeats every worker thread into `gemini:workers`
  and renews this host's CPU/RAM budget in `server:hosts`.

A job whose slot or lease is lost is told to stop: its `abort` event is set, and
`before_call` (the engine's check before each Gemini call) refuses the next call,
so the document goes back to ready instead of paying Gemini for a result that
cannot be written.

SIGINT/SIGTERM start a drain (`begin_drain`): jobs waiting for a slot, or that
have not made their first Gemini call yet, give their document back at once (no
attempt counted); documents in progress go on with all their chunks and write
their result for up to `OCR_SHUTDOWN_GRACE_MS`, after which they are stopped
before their next call and given back. The process then exits 0.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from control_plane.breakers import Breakers
from control_plane.capacity import register_host
from control_plane.config import Settings
from control_plane.dispatch import EnqueuedSet
from control_plane.drain import JobStopped, shutdown_timeout_ms, stop_reason
from control_plane.gemini.engine import GeminiOcrEngine
from control_plane.keys import HOST_TTL_MS, Keys
from control_plane.logs import log_event
from control_plane.pool import SlotLease, WorkerPool
from control_plane.queue.documents import DocumentFetcher
from control_plane.queue.environments import Environments
from control_plane.redis_conn import redis_client
from control_plane.scripts import check_scripting
from control_plane.slot_costs import CostSampler, host_costs
from control_plane.workers import WorkerRegistry


@dataclass(eq=False)
class ActiveJob:
    """A document a thread is working on: what the heartbeats must keep alive."""

    environment: str
    doc_id: int
    lease_token: str
    mode: str
    slot: SlotLease | None = None
    lease_renewed_at: float = field(default_factory=time.monotonic)
    lease_lost: bool = False
    slot_lost: bool = False
    started: bool = False  # the lease was started (renewed from then on)
    calls: int = 0  # Gemini calls started: paid work a drain lets finish
    # Set when the job must stop before its next Gemini call (the engine's stop event).
    abort: threading.Event = field(default_factory=threading.Event)
    abort_reason: str = ""

    @property
    def ref(self) -> str:
        return f"{self.environment}/{self.doc_id}"

    def stop(self, reason: str) -> bool:
        """Ask the job to stop before its next Gemini call; False if already asked."""
        if self.abort.is_set():
            return False
        self.abort_reason = reason
        self.abort.set()
        return True


class WorkerRuntime:
    """Everything a worker process shares between its threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = settings.ocr_host_name
        self.pid = os.getpid()
        self.types: list[str] | None = None  # issue 14: types this process consumes (None: all)
        url = settings.redis_url.get_secret_value()
        self.client = redis_client(url)
        self.keys = Keys(prefix=settings.ocr_redis_prefix)
        self.pool = WorkerPool.from_settings(self.client, settings, self.keys)
        # Heartbeats on their own client with short timeouts: one call blocks for at most
        # a fraction of the slot TTL, and never behind a job's long Redis wait.
        beat_timeout = max(0.5, min(2.0, settings.ocr_slot_ttl_ms / 6000))
        self.beat_client = redis_client(url, timeout_s=beat_timeout, retries=1)
        self.slot_pool = WorkerPool.from_settings(self.beat_client, settings, self.keys)
        self.registry = WorkerRegistry(self.client, self.keys)
        self.beat_registry = WorkerRegistry(self.beat_client, self.keys)
        self.enqueued = EnqueuedSet(self.client, self.keys)
        self.environments = Environments.from_settings(settings)
        self.fetcher = DocumentFetcher(settings, self.environments)
        self.engine = GeminiOcrEngine.from_settings(settings, self.client, self.keys)
        self.breakers = Breakers(self.client, self.keys)  # issue 11: document hosts
        self.stop_event = threading.Event()
        self._drain_deadline: float | None = None
        self._jobs: dict[int, ActiveJob | None] = {}  # thread ident -> job (None = idle)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        # issue 15: OCR_CAPACITY_COSTS=learned measures this process's cost per busy slot
        self.cost_sampler = (
            CostSampler(
                self.beat_client,
                self.keys,
                self.host,
                settings.slot_costs,
                ceiling=(settings.cpu_budget, settings.ram_budget),
            )
            if settings.capacity_costs == "learned"
            else None
        )

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
        self._beat_one(self.registry, threading.get_ident(), job)

    def running(self) -> list[ActiveJob]:
        with self._lock:
            return [job for job in self._jobs.values() if job is not None]

    # --- the engine's check before each Gemini call ---

    def before_call(self, job: ActiveJob) -> None:
        """Raise `JobStopped` if `job` may not make its next Gemini call; else count it."""
        with self._lock:  # atomic with begin_drain: a call is either counted or refused
            reason = stop_reason(
                abort_reason=job.abort_reason,
                stopping=self.stop_event.is_set(),
                calls=job.calls,
                drain_expired=self._drain_expired(),
            )
            if reason is None:
                job.calls += 1
                return
            job.stop(reason)
        raise JobStopped(reason)

    def _drain_expired(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() >= self._drain_deadline

    # --- drain (SIGTERM / Ctrl+C) ---

    def begin_drain(self) -> None:
        """Stop taking work; let documents in progress finish within OCR_SHUTDOWN_GRACE_MS."""
        grace_s = self.settings.ocr_shutdown_grace_ms / 1000
        given_back = finishing = 0
        with self._lock:
            if self.stop_event.is_set():
                return
            self._drain_deadline = time.monotonic() + grace_s
            self.stop_event.set()
            for job in self._jobs.values():
                if job is None:
                    continue
                if job.calls == 0:
                    job.stop("worker stopping before the document's first Gemini call")
                    given_back += 1
                else:
                    finishing += 1
        log_event(
            "worker.draining",
            "finishing the documents in progress; waiting ones go back to ready",
            pid=self.pid,
            finishing=finishing,
            given_back=given_back,
            grace_s=grace_s,
        )
        self._start("ocr-drain-timer", lambda: self._drain_timer(grace_s))
        try:  # say so at once: other hosts stop handing messages to this process
            self.beat()
        except Exception as exc:  # the heartbeat says it within an interval anyway
            log_event("worker.drain_beat_failed", level="WARNING", error=type(exc).__name__)

    def _drain_timer(self, grace_s: float) -> None:
        if self._closed.wait(grace_s):
            return
        stopped = [
            job.ref
            for job in self.running()
            if job.stop("OCR_SHUTDOWN_GRACE_MS passed while stopping")
        ]
        if stopped:
            log_event(
                "worker.drain_expired",
                "grace period over; documents still in progress go back to ready",
                level="WARNING",
                documents=",".join(stopped),
            )

    # --- heartbeats: three independent loops ---

    def start_heartbeat(self) -> None:
        s = self.settings
        interval = s.ocr_heartbeat_interval_ms / 1000
        slot_every = min(interval, s.ocr_slot_ttl_ms / 3000)
        self._start(
            "ocr-heartbeat-slots", lambda: self._loop("slots", slot_every, self.renew_slots)
        )
        self._start("ocr-heartbeat-workers", lambda: self._loop("workers", interval, self.beat))
        for env in self.environments.names:
            self._start(
                f"ocr-heartbeat-leases-{env}",
                lambda env=env: self._loop(  # type: ignore[misc]
                    f"leases-{env}", interval, lambda: self.renew_leases(env)
                ),
            )

    def _start(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self, what: str, every_s: float, step: Callable[[], None]) -> None:
        while not self._closed.wait(every_s):
            try:
                step()
            except Exception as exc:  # a heartbeat must outlive outages
                log_event(
                    "worker.heartbeat_failed",
                    f"{what} heartbeat failed",
                    level="WARNING",
                    error=type(exc).__name__,
                )

    def renew_slots(self) -> None:
        """Renew the slot of every running job; a job whose slot was taken stops."""
        for job in self.running():
            if job.slot is None or job.slot_lost:
                continue
            try:
                ok = self.slot_pool.renew_slot(job.slot)
            except Exception as exc:  # Redis down: the slot state is there too; try again
                log_event(
                    "worker.slot_renew_failed",
                    "slot not renewed (will retry)",
                    level="WARNING",
                    document=job.ref,
                    error=type(exc).__name__,
                )
                continue
            if not ok:
                job.slot_lost = True
                job.stop("its pool slot lapsed and was taken back")
                log_event(
                    "worker.slot_lost",
                    "slot lease lapsed; the job stops before its next Gemini call",
                    level="WARNING",
                    document=job.ref,
                    slot=job.slot.slot_id,
                )

    def renew_leases(self, environment: str) -> None:
        """Renew, well before they lapse, the leases of this environment's running jobs."""
        due_s = self.settings.ocr_lease_ms / 4000
        for job in self.running():
            if job.environment != environment or not job.started or job.lease_lost:
                continue
            if time.monotonic() - job.lease_renewed_at >= due_s:
                self._renew_lease(job)

    def _renew_lease(self, job: ActiveJob) -> None:
        try:
            ok = self.environments.store(job.environment).renew(
                job.doc_id, job.lease_token, self.settings.ocr_lease_ms
            )
        except Exception as exc:  # database down or slow: the slots are renewed elsewhere
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
            job.stop("its lease was taken over")
            log_event(
                "worker.lease_lost",
                "lease was taken over; the job stops before its next Gemini call",
                level="WARNING",
                document=job.ref,
            )

    def beat(self) -> None:
        """Heartbeat every thread into gemini:workers; renew this host's budget."""
        with self._lock:
            jobs = list(self._jobs.items())
        for ident, job in jobs:
            self._beat_one(self.beat_registry, ident, job)
        self.register_host()
        if self.cost_sampler is not None:
            self.learn_costs()

    def learn_costs(self) -> None:
        """issue 15: sample this process's CPU/RSS per busy slot; take slots at the learned
        costs of this host from now on."""
        assert self.cost_sampler is not None
        busy: dict[str, int] = {}
        for job in self.running():
            if job.slot is not None and not job.slot_lost:
                busy[job.mode] = busy.get(job.mode, 0) + 1
        self.cost_sampler.sample(busy)
        costs = host_costs(self.beat_client, self.keys, self.host, self.settings.slot_costs)
        self.pool.costs = self.slot_pool.costs = costs

    def register_host(self) -> None:
        s = self.settings
        ttl_ms = max(HOST_TTL_MS, 3 * s.ocr_heartbeat_interval_ms)
        register_host(self.beat_client, self.keys, self.host, s.cpu_budget, s.ram_budget, ttl_ms)

    def _beat_one(self, registry: WorkerRegistry, ident: int, job: ActiveJob | None) -> None:
        registry.heartbeat(
            self.worker_id(ident),
            host=self.host,
            pid=self.pid,
            mode=job.mode if job else None,
            document=job.ref if job else None,
            # issue 14: the doctor compares this host's clock with Redis TIME and checks
            # that every type with ready documents has a thread consuming its queue
            clock_ms=int(time.time() * 1000),
            types=self.types,
            # a draining process fetches no message: no host hands it one (consuming_hosts)
            draining=self.stop_event.is_set(),
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

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Remember the queues this process consumes (`-Q`), for the doctor (issue 14)."""
        from control_plane.dispatch import QUEUE_NAMES

        chosen = getattr(worker, "consumer_whitelist", None)
        if chosen:
            runtime().types = [t for t, q in QUEUE_NAMES.items() if q in chosen]

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
        try:
            rt.register_host()  # the scheduler fits the pool to this host at once
        except Exception as exc:  # the heartbeat registers it soon anyway
            log_event("worker.host_register_failed", level="WARNING", error=type(exc).__name__)
        rt.start_heartbeat()
        log_event("worker.boot", "worker process ready", host=rt.host, pid=rt.pid)
        grace_ms = rt.settings.ocr_shutdown_grace_ms
        timeout_ms = shutdown_timeout_ms(sys.argv)
        if grace_ms + 10_000 > timeout_ms:
            log_event(
                "worker.drain_budget",
                f"OCR_SHUTDOWN_GRACE_MS={grace_ms} leaves less than 10 s under dramatiq's "
                f"--worker-shutdown-timeout={timeout_ms}: jobs may be abandoned at stop",
                level="WARNING",
            )

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        runtime().thread_started()

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        runtime().thread_stopped()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        runtime().begin_drain()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        runtime().close()
        log_event("worker.stopped", "worker process stopped cleanly")
