"""The control process: leadership, rebalance, feed, reap and status on APScheduler.

Every instance runs the same jobs; only the one holding the leader lock acts,
the others are hot standbys that take over within a lock TTL of its death.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from control_plane.allocation import compute_allocation, explain_allocation
from control_plane.breakers import Breakers
from control_plane.capacity import Capacity, fit_allocation
from control_plane.config import DOCUMENT_TYPES, Settings
from control_plane.dispatch import DocumentMessage, EnqueuedSet, enqueue_document, make_broker
from control_plane.errors import MAX_HELD_COOLDOWN_S, OcrPoolError, TransientError
from control_plane.keys import WORKER_STALE_MS, Keys
from control_plane.logs import log_event
from control_plane.pacing import allocation_options, lent_types, lookahead_for, read_weights
from control_plane.pool import WorkerPool
from control_plane.queue.environments import Environments
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.redis_conn import is_transient_redis_error
from control_plane.scheduler.backoff import JobBackoff
from control_plane.scheduler.leader import LeaderLock, instance_id
from control_plane.scheduler.metrics import SchedulerMetrics
from control_plane.scheduler.status import StatusSnapshot, now_utc, render_status
from control_plane.workers import WorkerRegistry

# Allocation versions: epoch * VERSION_STRIDE + sequence, so a new leader's
# versions always beat an old leader's, whatever their sequence numbers.
VERSION_STRIDE = 1_000_000_000


@dataclass
class FeedResult:
    """What one feed pass did, per type."""

    claimed: dict[str, int]
    wanted: dict[str, int]


def feed_wants(
    free: dict[str, int], enqueued: dict[str, int], ahead: dict[str, int] | None = None
) -> dict[str, int]:
    """Documents to claim per type: free slots (plus `ahead` extra) not already covered.

    `enqueued` counts messages that hold no slot yet (queued, or waiting for a slot in a
    worker thread); `ahead` keeps that many more waiting so a freed slot is refilled at
    once instead of after the next feed and the broker's poll.
    """
    ahead = ahead or {}
    return {
        t: max(0, free.get(t, 0) + ahead.get(t, 0) - enqueued.get(t, 0)) for t in DOCUMENT_TYPES
    }


class Scheduler:
    """The jobs of `python scheduler.py`, each safe to call from any thread."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        keys: Keys,
        environments: Environments,
        *,
        owner: str | None = None,
        out: Any = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.keys = keys
        self.environments = environments
        self.owner = owner or instance_id()
        self.leader = LeaderLock(client, keys, self.owner)
        self.pool = WorkerPool.from_settings(client, settings, keys)
        self.capacity = Capacity.from_settings(client, settings, keys)
        self.limiter = GeminiRateLimiter.from_settings(client, settings, keys)
        self.registry = WorkerRegistry(client, keys)
        self.enqueued = EnqueuedSet(client, keys)
        self.broker = make_broker(
            settings.redis_url.get_secret_value(), settings.ocr_dramatiq_namespace
        )
        self.metrics = SchedulerMetrics()
        self._sequence = 0
        self._allocation: dict[str, int] | None = None  # last published, for the feed
        self._planned: dict[str, int] | None = None  # last plan, for hysteresis
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._feed_paused = False
        self._out = out
        self._backoff = JobBackoff()

    # --- leadership ---

    def tick_leadership(self) -> bool:
        """Take or keep the lead; on taking it, rebalance at once."""
        was_leader = self.leader.is_leader
        try:
            leading = self.leader.try_acquire()
        except redis.RedisError as exc:
            log_event(
                "leader.error",
                "cannot reach Redis for the leader lock",
                level="WARNING",
                error=type(exc).__name__,
            )
            self.leader.is_leader = False
            return False
        if leading and not was_leader:
            log_event(
                "leader.acquired",
                "this scheduler now leads",
                owner=self.owner,
                epoch=self.leader.epoch,
            )
            self.rebalance(force=True)
        elif was_leader and not leading:
            log_event(
                "leader.lost",
                "leadership lost to another scheduler",
                level="WARNING",
                holder=self.leader.holder(),
            )
        return leading

    # --- rebalance ---

    def rebalance(self, *, force: bool = False) -> dict[str, int] | None:
        """Queue shares -> allocation -> capacity fit -> publish (leader only)."""
        if not self.leader.is_leader or self._backing_off("rebalance"):
            return None
        try:
            counts = self.environments.counts()
        except TransientError as exc:
            self._back_off("rebalance", exc)
            return None
        self._backoff.succeeded("rebalance")
        queued = {t: counts[t].ready if t in counts else 0 for t in DOCUMENT_TYPES}
        return self.apply_queue(queued, force=force)

    def apply_queue(self, queued: dict[str, int], *, force: bool = False) -> dict[str, int]:
        """Publish the allocation for these ready counts; log when it changes."""
        s = self.settings
        weights = (
            read_weights(self.client, self.keys) if s.ocr_allocation_weighting == "time" else None
        )
        options = allocation_options(s, weights, self._planned)
        planned = compute_allocation(queued, s.ocr_worker_pool_size, s.minimums, **options)
        fitted, capacity_bound = fit_allocation(
            planned, s.slot_costs, s.cpu_budget, s.ram_budget, s.minimums
        )
        reason = explain_allocation(queued, s.ocr_worker_pool_size, s.minimums, planned, **options)
        if capacity_bound:
            reason += f"; capacity-bound (CPU {s.cpu_budget:g}, RAM {s.ram_budget:g} GB)"
        with self._lock:
            self._sequence += 1
            version = self.leader.epoch * VERSION_STRIDE + self._sequence
        previous = self.pool.read_allocation() or {}
        changed = any(previous.get(t) != fitted.get(t) for t in DOCUMENT_TYPES)
        published = self.pool.publish_allocation(
            fitted,
            version=version,
            reason=reason,
            queue=queued,
            planned=planned,
            capacity_bound=capacity_bound,
            leader=self.owner,
        )
        if not published:
            log_event(
                "rebalance.stale",
                "a newer allocation exists; not overwritten",
                level="WARNING",
                version=version,
            )
        elif changed or force:
            log_event(
                "rebalance.changed" if changed else "rebalance.kept",
                f"allocation index {fitted['index']} / acte {fitted['acte']}",
                queue_index=queued["index"],
                queue_acte=queued["acte"],
                reason=reason,
                previous_index=previous.get("index"),
                previous_acte=previous.get("acte"),
            )
        if published:
            self._allocation = dict(fitted)
            self._planned = dict(planned)
        self.metrics.allocation(fitted)
        return fitted

    # --- feed ---

    def feed(self) -> FeedResult | None:
        """Claim as many documents per type as there are uncovered free slots; enqueue them."""
        if not self.leader.is_leader or self._stopping.is_set() or self._backing_off("feed"):
            return None
        if self._gemini_paused():
            return None
        self._reclaim_lent()
        free = self.pool.free_slots()
        ahead = lookahead_for(self._allocation, self.settings.ocr_feed_lookahead)
        wants = feed_wants(free, self.enqueued.counts(), ahead)
        claimed: dict[str, int] = {t: 0 for t in DOCUMENT_TYPES}
        for source, want in wants.items():
            if want <= 0:
                continue
            try:
                docs = self.environments.claim_fair(
                    source, want, self.owner, self.settings.ocr_lease_ms
                )
            except TransientError as exc:
                self._back_off("feed", exc)
                break
            self._backoff.succeeded("feed")
            if not docs:
                continue
            now_ms = self._redis_now_ms()
            messages = [
                DocumentMessage(
                    d.environment,
                    d.id,
                    d.document_source,
                    d.storage_path,
                    d.lease_token,
                    d.attempts,
                )
                for d in docs
            ]
            self.enqueued.add(source, [m.ref for m in messages], now_ms)
            for message in messages:
                try:
                    enqueue_document(self.broker, message)
                except redis.RedisError:
                    self._give_back(message)
                    raise
            claimed[source] = len(messages)
            self.metrics.fed(source, len(messages))
            log_event(
                "feed.enqueued",
                f"{len(messages)} {source} document(s) enqueued",
                document_source=source,
                free_slots=free.get(source, 0),
                count=len(messages),
            )
        return FeedResult(claimed=claimed, wanted=wants)

    def _gemini_paused(self) -> bool:
        """True during a cooldown too long for a job to hold (a per-day quota): claim nothing.

        Workers give their documents back then; claiming more would only churn them.
        """
        remaining_ms = self.limiter.cooldown_remaining_ms()
        paused = remaining_ms > MAX_HELD_COOLDOWN_S * 1000
        if paused != self._feed_paused:
            self._feed_paused = paused
            if paused:
                reason = self.client.get(self.keys.cooldown_reason) or "reason not recorded"
                log_event(
                    "feed.paused",
                    f"Gemini paused for {remaining_ms / 3_600_000:.1f} h; "
                    "no document is claimed until then, the queue stays ready",
                    level="WARNING",
                    reason=reason,
                )
            else:
                log_event("feed.resumed", "Gemini cooldown over; feeding again")
        return paused

    def _reclaim_lent(self) -> None:
        """A type that lent its slots has work again: rebalance now, not at the next tick."""
        lent = lent_types(self._allocation, self.settings.minimums)
        if not lent:
            return
        try:
            counts = self.environments.counts()
        except TransientError as exc:
            self._back_off("feed", exc)
            return
        queued = {t: counts[t].ready if t in counts else 0 for t in DOCUMENT_TYPES}
        if any(queued[t] > 0 for t in lent):
            log_event(
                "rebalance.reclaim",
                f"{', '.join(lent)} has work again: slots return",
                queue_index=queued["index"],
                queue_acte=queued["acte"],
            )
            self.apply_queue(queued)

    def _give_back(self, message: DocumentMessage) -> None:
        """A claimed document we could not enqueue goes straight back to ready."""
        self.enqueued.remove(message.document_source, message.ref)
        try:
            self.environments.store(message.environment).release(message.id, message.lease_token)
        except OcrPoolError:
            pass  # the lease will lapse and the reaper will put it back

    # --- reap ---

    def reap(self) -> None:
        """Expired leases back to ready; dead workers and lapsed slots out."""
        if not self.leader.is_leader:  # per-environment failures: Environments.reap
            return
        # Leases lapse during an outage because nobody can renew them, not because their
        # holders died: an environment is reaped only once its database has answered again
        # for a whole lease, so the workers holding results can write them first.
        results = self.environments.reap(
            self.settings.ocr_max_attempts, settle_s=self.settings.ocr_lease_ms / 1000
        )
        for env, result in results.items():
            if result.requeued or result.errored:
                log_event(
                    "reap.leases",
                    "expired leases reaped",
                    environment=env,
                    requeued=result.requeued,
                    errored=result.errored,
                )
                self.metrics.reaped(env, result.requeued + result.errored)
        dead = self.registry.reap_stale(WORKER_STALE_MS)
        if dead:
            log_event(
                "reap.workers", f"{len(dead)} silent worker(s) removed", workers=",".join(dead)
            )
        slots = self.pool.reap_expired()
        if slots:
            log_event("reap.slots", f"{len(slots)} lapsed slot(s) freed", slots=",".join(slots))
        self.enqueued.prune(self._redis_now_ms() - self.settings.ocr_lease_ms)

    # --- status ---

    def snapshot(self) -> StatusSnapshot:
        """Live state for the status block and the metrics."""
        s = self.settings
        workers = self.registry.all()
        by_mode: dict[str, int] = {}
        for info in workers.values():
            mode = info.get("mode")
            if mode:
                by_mode[mode] = by_mode.get(mode, 0) + 1
        rpm, tpm = self.limiter.usage()
        cpu, ram = self.capacity.usage()
        snap = StatusSnapshot(
            taken_at=now_utc(),
            pool_size=s.ocr_worker_pool_size,
            allocation=self.pool.read_allocation(),
            assignments=self.pool.assignments(),
            busy=self.pool.busy_slots(),
            registered_threads=len(workers),
            workers_by_mode=by_mode,
            external=self.capacity.external(),
            rpm_used=rpm,
            tpm_used=tpm,
            rpm_limit=s.gemini_rpm_limit,
            tpm_limit=s.gemini_tpm_limit,
            cooldown_ms=self.limiter.cooldown_remaining_ms(),
            cpu_used=cpu,
            ram_used=ram,
            cpu_budget=s.cpu_budget,
            ram_budget=s.ram_budget,
            leader=self.leader.holder(),
            enqueued=self.enqueued.counts(),
        )
        try:
            by_env = self.environments.counts_by_environment()
        except TransientError as exc:
            snap.queue_error = type(exc).__name__
            by_env = {}
        totals: dict[str, dict[str, int]] = {}
        for env, counts in by_env.items():
            snap.queue_by_environment[env] = {
                t: {"ready": c.ready, "in_flight": c.in_flight} for t, c in counts.items()
            }
            for t, c in counts.items():
                total = totals.setdefault(t, {"ready": 0, "in_flight": 0, "waiting_retry": 0})
                total["ready"] += c.ready
                total["in_flight"] += c.in_flight
                total["waiting_retry"] += c.waiting_retry
        snap.queue = totals
        raw = self.client.hgetall(self.keys.pool_stats)
        snap.documents = {str(k): int(v) for k, v in raw.items()}
        snap.breakers = Breakers(self.client, self.keys).open_breakers()
        return snap

    def status_text(self) -> str:
        snap = self.snapshot()
        self.metrics.observe(snap, self.limiter)
        return render_status(snap)

    def print_status(self) -> None:
        if not self.leader.is_leader:
            return
        print(self.status_text(), file=self._out, flush=True)

    # --- error handling ---

    def _back_off(self, job: str, exc: BaseException) -> None:
        delay = self._backoff.failed(job, time.monotonic())
        log_event(
            f"{job}.backoff",
            f"{job} paused {delay:.0f}s: queue database unavailable",
            level="WARNING",
            error=str(exc)[:200],
        )

    def _backing_off(self, job: str) -> bool:
        return self._backoff.paused(job, time.monotonic())

    def _redis_now_ms(self) -> int:
        sec, usec = self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    # --- lifecycle ---

    def guarded(self, job: str, fn: Any) -> Any:
        """Run a job; Redis or database trouble is logged, never kills the scheduler."""

        def run() -> None:
            try:
                fn()
            except Exception as exc:
                level = "WARNING" if is_transient_redis_error(exc) else "ERROR"
                log_event(
                    f"{job}.failed",
                    f"{job} failed: {type(exc).__name__}",
                    level=level,
                    error=str(exc)[:300],
                )

        return run

    def run_forever(self) -> None:
        """Block running the jobs until SIGINT/SIGTERM."""
        s = self.settings
        sched = BlockingScheduler(executors={"default": ThreadPoolExecutor(8)}, timezone="UTC")
        now = now_utc()
        every = [
            ("leadership", self.tick_leadership, 2000),
            ("rebalance", self.rebalance, s.ocr_rebalance_interval_ms),
            ("feed", self.feed, s.ocr_feed_interval_ms),
            ("reap", self.reap, max(1000, min(s.ocr_lease_ms // 4, 15_000))),
            ("status", self.print_status, s.ocr_status_interval_ms),
        ]
        for name, fn, interval_ms in every:
            sched.add_job(
                self.guarded(name, fn),
                "interval",
                seconds=interval_ms / 1000,
                id=name,
                max_instances=1,
                coalesce=True,
                next_run_time=now,
                misfire_grace_time=max(1, interval_ms // 1000),
            )

        def stop(signum: int, _frame: Any) -> None:
            if self._stopping.is_set():
                return
            self._stopping.set()
            log_event(
                "scheduler.stopping",
                f"signal {signal.Signals(signum).name}: stopping",
                owner=self.owner,
            )
            sched.shutdown(wait=False)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        sched.start()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop feeding, hand over leadership, close connections."""
        self._stopping.set()
        try:
            self.leader.release()
        except redis.RedisError:
            pass
        self.environments.close()
        self.metrics.stop()
        log_event("scheduler.stopped", "scheduler stopped cleanly", owner=self.owner)
