"""The control process: leadership, rebalance, feed, reap and status on APScheduler.

Every instance runs the same jobs; only the one holding the leader lock acts,
the others are hot standbys that take over within a lock TTL of its death.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from control_plane.allocation import compute_allocation, explain_allocation
from control_plane.autopilot_runtime import Autopilot
from control_plane.breakers import Breakers
from control_plane.capacity import Capacity, fit_allocation, live_hosts, pool_budget
from control_plane.config import DOCUMENT_TYPES, Settings
from control_plane.dispatch import DocumentMessage, EnqueuedSet, FencedEnqueuer, make_broker
from control_plane.errors import (
    MAX_HELD_COOLDOWN_S,
    LeaderFencedError,
    OcrPoolError,
    TransientError,
)
from control_plane.keys import WORKER_STALE_MS, Keys
from control_plane.logs import log_event
from control_plane.pacing import allocation_options, lent_types, lookahead_for, read_weights
from control_plane.pool import WorkerPool
from control_plane.queue.environments import Environments
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.redis_conn import is_transient_redis_error
from control_plane.scheduler.backoff import JobBackoff
from control_plane.scheduler.banner import SHUTDOWN_STEPS, shutdown_footer, shutdown_header
from control_plane.scheduler.leader import LeaderLock, instance_id
from control_plane.scheduler.metrics import SchedulerMetrics
from control_plane.scheduler.screens import wants_emoji
from control_plane.scheduler.status import StatusSnapshot, now_utc, render_status
from control_plane.slot_costs import fleet_costs, learned_costs
from control_plane.workers import WorkerRegistry

# Allocation versions: epoch * VERSION_STRIDE + sequence (below 2**53 with epochs in the
# Redis-clock milliseconds range, see leader_acquire.lua). Publishes are fenced on the
# leader lock and epoch and compared by version only within one epoch, so a sequence
# past the stride is harmless.
VERSION_STRIDE = 1_000

# At shutdown, how long the scheduler waits for a feed in flight to enqueue or give back
# its claimed batch before it hands over the lead and closes the database pools.
FEED_STOP_WAIT_S = 30.0


@dataclass
class FeedResult:
    """What one feed pass did, per type."""

    claimed: dict[str, int]
    wanted: dict[str, int]


def settle_after_outage_s(heartbeat_interval_ms: int) -> float:
    """Pure: how long the reaper waits after a database outage beyond its length: live
    workers retry an overdue lease renewal every heartbeat (three chances) and a held
    result within 5 s (the capped retry of the completion write)."""
    return 3 * heartbeat_interval_ms / 1000 + 5.0


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
        self.enqueuer = FencedEnqueuer(client, keys, settings.ocr_dramatiq_namespace)
        self.metrics = SchedulerMetrics()
        self._sequence = 0
        self._allocation: dict[str, int] | None = None  # last published, for the feed
        self._planned: dict[str, int] | None = None  # last plan, for hysteresis
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._leadership = threading.Lock()  # acquire vs release at shutdown
        self._feeding = threading.Lock()  # held by a feed in flight; shutdown waits for it
        self._feed_paused = False
        self._out = out
        self._backoff = JobBackoff()
        # issue 15: OCR_WORKER_POOL_SIZE=auto sizes the pool at each rebalance
        self.autopilot = (
            Autopilot(settings, client, keys, self.pool, self.limiter, self.registry)
            if settings.autopilot
            else None
        )

    # --- leadership ---

    def tick_leadership(self, *, background: bool = False) -> bool:
        """Take or keep the lead; on taking it, fence the databases and rebalance at once.

        `background`: the takeover work runs in its own thread, so a slow database can
        never delay the next renewal of the lock (the periodic job uses it).
        """
        was_leader = self.leader.is_leader
        try:
            with self._leadership:  # never (re)acquired once shutdown has released it
                if self._stopping.is_set():
                    return False
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
        self._observe_leadership(leading)
        if leading and not was_leader:
            log_event(
                "leader.acquired",
                "this scheduler now leads",
                owner=self.owner,
                epoch=self.leader.epoch,
            )
            if background:
                threading.Thread(
                    target=self.guarded("takeover", self.take_over), name="takeover", daemon=True
                ).start()
            else:
                self.take_over()
        elif was_leader and not leading:
            log_event(
                "leader.lost",
                "leadership lost to another scheduler",
                level="WARNING",
                holder=self.leader.holder(),
            )
        return leading

    def _observe_leadership(self, leading: bool) -> None:
        """Leader gauge on every scheduler, with the current leadership's epoch (issue 14)."""
        try:
            epoch = self.client.get(self.keys.leader_epoch)
        except redis.RedisError:
            epoch = None
        self.metrics.leadership(self.owner, leading, int(epoch) if epoch is not None else None)

    def _succeeded(self, job: str, started: float) -> None:
        """The environments this job reached since `started` (monotonic), for the metrics."""
        health = self.environments.health
        reached = [env for env in self.environments.names if health.healthy_since(env, started)]
        self.metrics.succeeded(job, reached, time.time())

    def take_over(self) -> None:
        """A new leader: raise every database's fence to our epoch, then rebalance.

        From then on the databases refuse the claims and reaps of any older leader. A
        database that has seen a higher epoch (ours went backwards: Redis lost its state
        and its clock is behind) makes us step down; the next acquire takes a higher one.
        """
        epoch = self.leader.epoch
        if self._stopping.is_set():
            return
        seen = self.environments.leader_fence(epoch, self.owner)
        highest = max(seen.values(), default=epoch)
        if highest > epoch:
            self._step_down(f"a database has seen leader epoch {highest}", epoch, highest + 1)
            return
        self.rebalance(force=True)

    def _step_down(self, why: str, refused_epoch: int, min_epoch: int = 0) -> None:
        """Fenced out under `refused_epoch`: stop acting at once and give the lock up.

        Nothing to give up when we have re-acquired under a newer epoch since (an action
        begun under the old one was refused, as it should be).
        """
        if self.leader.epoch != refused_epoch:
            return
        log_event(
            "leader.fenced",
            f"stepping down: {why}",
            level="WARNING",
            owner=self.owner,
            epoch=self.leader.epoch,
        )
        self.leader.step_down(min_epoch)

    # --- rebalance ---

    def rebalance(self, *, force: bool = False) -> dict[str, int] | None:
        """Queue shares -> allocation -> capacity fit -> publish (leader only)."""
        if not self.leader.acting() or self._backing_off("rebalance"):
            return None
        started = time.monotonic()
        try:
            counts = self.environments.counts()
        except TransientError as exc:
            self._back_off("rebalance", exc)
            return None
        self._backoff.succeeded("rebalance")
        self._succeeded("rebalance", started)
        queued = {t: counts[t].ready if t in counts else 0 for t in DOCUMENT_TYPES}
        if self.autopilot is not None:  # issue 15
            decision = self.autopilot.step(queued)
            self.metrics.autopilot(decision, self.settings.autopilot_api_fraction)
        return self.apply_queue(queued, force=force)

    def fleet_budget(self) -> tuple[float, float, str]:
        """(vCPU, GB, hosts) the allocation is fitted to: the sum of the budgets the live
        worker hosts registered, or this process's own settings while none is registered."""
        s = self.settings
        hosts = live_hosts(self.client, self.keys)
        cpu, ram = pool_budget(hosts, (s.cpu_budget, s.ram_budget))
        names = ", ".join(h.host for h in hosts)
        return cpu, ram, (f"{len(hosts)} host(s): {names}" if hosts else "")

    def slot_costs(self) -> dict[str, tuple[float, float]]:
        """Declared costs, or (OCR_CAPACITY_COSTS=learned) the dearest live host's (issue 15)."""
        s = self.settings
        if s.capacity_costs != "learned":
            return s.slot_costs
        hosts = [h.host for h in live_hosts(self.client, self.keys)]
        return fleet_costs(learned_costs(self.client, self.keys), hosts, s.slot_costs)

    @property
    def pool_size(self) -> int:
        """The pool size to plan with: the fixed setting, or the autopilot's choice."""
        if self.autopilot is not None:
            return self.autopilot.size
        return self.settings.ocr_worker_pool_size

    def apply_queue(self, queued: dict[str, int], *, force: bool = False) -> dict[str, int]:
        """Publish the allocation for these ready counts; log when it changes."""
        s = self.settings
        weights = (
            read_weights(self.client, self.keys) if s.ocr_allocation_weighting == "time" else None
        )
        options = allocation_options(s, weights, self._planned)
        size = self.pool_size
        planned = compute_allocation(queued, size, s.minimums, **options)
        cpu_budget, ram_budget, hosts = self.fleet_budget()  # issue 10: every live host's budget
        fitted, capacity_bound = fit_allocation(
            planned, self.slot_costs(), cpu_budget, ram_budget, s.minimums
        )
        reason = explain_allocation(queued, size, s.minimums, planned, **options)
        extra: dict[str, Any] = {}
        if self.autopilot is not None:  # issue 15: the chosen size and why
            extra["autopilot"] = self.autopilot.published_fields()
        if capacity_bound:
            reason += (
                f"; capacity-bound (CPU {cpu_budget:g}, RAM {ram_budget:g} GB"
                f" on {hosts or 'this host'})"
            )
        with self._lock:
            self._sequence += 1
            epoch = self.leader.epoch
            version = epoch * VERSION_STRIDE + self._sequence
        previous = self.pool.read_allocation() or {}
        changed = any(previous.get(t) != fitted.get(t) for t in DOCUMENT_TYPES)
        published = self.leader.acting() and self.pool.publish_allocation(
            fitted,
            version=version,
            reason=reason,
            fence=(self.owner, epoch),
            queue=queued,
            planned=planned,
            capacity_bound=capacity_bound,
            **extra,
        )
        if not published and not self.leader.acting():
            log_event(
                "rebalance.fenced",
                "not the current leader (lease lapsed or fenced); allocation not published",
                level="WARNING",
                version=version,
            )
        elif not published:
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
        """Claim as many documents per type as there are uncovered free slots; enqueue them.

        Every step is fenced: the leader lease is checked before each claim and each
        enqueue, the claim carries the epoch (refused by a database a newer leader has
        fenced), and each enqueue is one script that checks the lock owner and epoch and
        writes the message and its enqueued-set entry together. Whatever fails between
        claim and enqueue, every claimed document not on a queue goes back to ready.
        """
        with self._feeding:  # shutdown closes the databases only after a feed in flight
            return self._feed()

    def _feed(self) -> FeedResult | None:
        if not self.leader.acting() or self._stopping.is_set() or self._backing_off("feed"):
            return None
        if self._gemini_paused():
            return None
        started = time.monotonic()
        self._reclaim_lent()
        free = self.pool.free_slots()
        if self.autopilot is not None:  # issue 15: busy slots sampled over the window
            self.autopilot.note_busy(self.pool.busy_slots(), self._allocation)
        ahead = lookahead_for(self._allocation, self.settings.ocr_feed_lookahead)
        wants = feed_wants(free, self.enqueued.counts(), ahead)
        claimed: dict[str, int] = {t: 0 for t in DOCUMENT_TYPES}
        for source, want in wants.items():
            if want <= 0:
                continue
            if not self.leader.acting():
                break
            epoch = self.leader.epoch
            try:
                docs = self.environments.claim_fair(
                    source, want, self.owner, self.settings.ocr_lease_ms, epoch=epoch
                )
            except TransientError as exc:
                self._back_off("feed", exc)
                break
            except LeaderFencedError as exc:
                self._step_down(f"claim refused: {exc}", epoch, epoch + 1)
                break
            self._backoff.succeeded("feed")
            if not docs:
                continue
            try:
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
            except BaseException:
                self.environments.give_back(docs)
                raise
            enqueued = self._enqueue_batch(messages, epoch)
            claimed[source] = enqueued
            if enqueued:
                self.metrics.fed(source, enqueued)
                log_event(
                    "feed.enqueued",
                    f"{enqueued} {source} document(s) enqueued",
                    document_source=source,
                    free_slots=free.get(source, 0),
                    count=enqueued,
                    epoch=epoch,
                )
            if not self.leader.acting():
                break  # fenced out: nothing more this pass
        self._succeeded("feed", started)
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

    def _enqueue_batch(self, messages: list[DocumentMessage], epoch: int) -> int:
        """Enqueue a claimed batch; every message not enqueued goes back to ready.

        Returns how many were enqueued: fewer than the batch when the leader was fenced
        out midway or Redis failed (logged; the feed goes on with the next type). Any
        other error gives back the rest of the batch and is raised.
        """
        done = 0
        try:
            while done < len(messages):
                if not self.leader.acting():
                    self._give_back_all(messages[done:], "leader lease lapsed before enqueue")
                    break
                if not self.enqueuer.enqueue(messages[done], self.owner, epoch):
                    self._give_back_all(messages[done:], "not the leader any more (fenced)")
                    self._step_down("enqueue refused: the lock or epoch moved on", epoch)
                    break
                done += 1
        except redis.RedisError as exc:
            self._give_back_all(messages[done:], f"enqueue failed: {type(exc).__name__}")
            log_event(
                "feed.enqueue_failed",
                f"{messages[0].document_source} batch enqueued {done} of {len(messages)}",
                level="WARNING",
                error=str(exc)[:200],
            )
        except BaseException:
            self._give_back_all(messages[done:], "enqueue failed")
            raise
        return done

    def _give_back_all(self, messages: list[DocumentMessage], why: str) -> None:
        """Claimed documents not on a queue go straight back to ready (never started)."""
        if not messages:
            return
        released = 0
        for message in messages:
            try:
                store = self.environments.store(message.environment)
                released += bool(store.release(message.id, message.lease_token))
            except (OcrPoolError, KeyError):
                pass  # the lease will lapse and the reaper will put it back (no attempt)
        log_event(
            "feed.given_back",
            f"{len(messages)} claimed document(s) not enqueued went back to ready: {why}",
            level="WARNING",
            count=len(messages),
            released=released,
            documents=",".join(m.ref for m in messages[:20]),
        )

    # --- reap ---

    def reap(self) -> None:
        """Expired leases back to ready; dead workers and lapsed slots out.

        Database reaps carry the epoch (refused once a newer leader fenced the database);
        every step first checks the leader lease. The Redis steps are convergent (they
        free what lapsed by Redis time, as any worker taking a slot does), so a step that
        slipped past the check changes nothing a live leader would not. Per-environment
        failures are Environments.reap's.
        """
        if not self.leader.acting():
            return
        epoch = self.leader.epoch
        # Leases lapse during an outage because nobody can renew them, not because their
        # holders died: an environment is reaped only once its database has answered again
        # for as long as the outage lasted plus a few heartbeats (at most a whole lease), so
        # the workers holding results can renew or write them first, and blips more
        # frequent than a lease cannot stop reaping for good.
        try:
            results = self.environments.reap(
                self.settings.ocr_max_attempts,
                settle_s=self.settings.ocr_lease_ms / 1000,
                epoch=epoch,
                after_outage_s=settle_after_outage_s(self.settings.ocr_heartbeat_interval_ms),
            )
        except LeaderFencedError as exc:
            self._step_down(f"reap refused: {exc}", epoch, epoch + 1)
            return
        self.metrics.succeeded("reap", sorted(results), time.time())
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
        if not self.leader.acting():
            return
        dead = self.registry.reap_stale(WORKER_STALE_MS)
        if dead:
            log_event(
                "reap.workers", f"{len(dead)} silent worker(s) removed", workers=",".join(dead)
            )
        if not self.leader.acting():
            return
        slots = self.pool.reap_expired()
        if slots:
            log_event("reap.slots", f"{len(slots)} lapsed slot(s) freed", slots=",".join(slots))
        if not self.leader.acting():
            return
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
        fleet_cpu, fleet_ram, _ = self.fleet_budget()  # issue 10: the live hosts' budgets
        cpu, ram = self.capacity.usage()
        snap = StatusSnapshot(
            taken_at=now_utc(),
            pool_size=self.pool_size,
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
            cpu_budget=fleet_cpu,
            ram_budget=fleet_ram,
            leader=self.leader.holder(),
            enqueued=self.enqueued.counts(),
        )
        epoch = self.client.get(self.keys.leader_epoch)
        snap.leader_epoch = int(epoch) if epoch is not None and snap.leader else None
        if snap.cooldown_ms > 0:
            reason = self.client.get(self.keys.cooldown_reason)
            snap.cooldown_reason = str(reason) if reason else None
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
        snap.environments = [e.describe() for e in self.environments.states()]  # issue 12
        raw = self.client.hgetall(self.keys.pool_stats)
        snap.documents = {str(k): int(v) for k, v in raw.items()}
        # issue 10: each live host against its own budget
        usage = self.pool.usage_by_host()
        snap.hosts = {
            h.host: {
                "cpu_used": usage.get(h.host, (0.0, 0.0))[0],
                "cpu_budget": h.cpu,
                "ram_used": usage.get(h.host, (0.0, 0.0))[1],
                "ram_budget": h.ram,
            }
            for h in live_hosts(self.client, self.keys)
        } or None
        if snap.hosts and s.capacity_costs == "learned":  # issue 15: measured costs
            learned = learned_costs(self.client, self.keys)
            for host, entry in snap.hosts.items():
                entry["learned"] = {
                    t: learned[(host, t)] for t in DOCUMENT_TYPES if (host, t) in learned
                }
        # issue 11: open circuit breakers (Gemini model, configuration, document hosts)
        if self.autopilot is not None:  # issue 15
            snap.autopilot = self.autopilot.status()
        snap.circuit_breakers = {
            name: {"state": "open", "why": " ".join(why.split())[:120]}
            for name, why in Breakers(self.client, self.keys).open_breakers().items()
        }
        return snap

    def status_text(self, *, emoji: bool = False) -> str:
        snap = self.snapshot()
        self.metrics.observe(snap, self.limiter)
        return render_status(snap, emoji=emoji)

    def print_status(self) -> None:
        if not self.leader.acting():
            # A standby prints nothing but keeps its gauges live (issue 14).
            self.metrics.observe(self.snapshot(), self.limiter)
            return
        out = self._out or sys.stdout
        print(self.status_text(emoji=wants_emoji(out)), file=out, flush=True)

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
            ("leadership", lambda: self.tick_leadership(background=True), 2000),
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
        self.shutdown(announce=True)

    def shutdown(self, *, announce: bool = False) -> None:
        """Stop feeding, hand over leadership, close connections.

        With `announce`, print the seed's shutdown block step by step: "workers" is
        the feed (the dramatiq workers finish their jobs and stop on their own
        signal), "pool manager" the leadership, "rate limiter" and "capacity
        manager" their connections and the metrics endpoint (their state lives in
        Redis and outlives us).
        """
        out = self._out or sys.stdout
        emoji = wants_emoji(out)

        def say(lines: list[str] | tuple[str, ...]) -> None:
            if announce:
                print("\n".join(lines), file=out, flush=True)

        say(shutdown_header(emoji))
        say(SHUTDOWN_STEPS[:1])
        self._stopping.set()
        # A feed in flight enqueues (we still lead) or gives back its claimed batch before
        # the lead is handed over and the pools closed: nothing waits a lease for the reaper.
        if self._feeding.acquire(timeout=FEED_STOP_WAIT_S):
            self._feeding.release()
        say(SHUTDOWN_STEPS[1:2])
        try:
            with self._leadership:
                self.leader.release()
        except redis.RedisError:
            pass
        say(SHUTDOWN_STEPS[2:3])
        self.environments.close()
        say(SHUTDOWN_STEPS[3:4])
        self.metrics.stop()
        log_event("scheduler.stopped", "scheduler stopped cleanly", owner=self.owner)
        say(shutdown_footer(emoji))
