"""Every Redis key the project uses, in one place: the redis-cli contract.

Keys marked CONTRACT are public (DESIGN.md section 5): operators and dashboards
read them by name. The others are ours, kept under the same prefixes.

`OCR_REDIS_PREFIX` (default empty) is put in front of every key; production
leaves it empty so the contract names are exact, tests and the demo use it to
share one Redis without touching each other's state.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- TTLs (milliseconds) ---
# Sliding-window bookkeeping lives one window plus this margin past its last write.
WINDOW_TTL_MARGIN_MS = 5_000
# A worker that has not heartbeaten for this long is dropped from gemini:workers.
WORKER_STALE_MS = 60_000
# A host's budget registration (server:hosts) lapses this long after its workers' last
# renewal (they renew it at every heartbeat, so at least 3 renewals fit in it).
HOST_TTL_MS = 30_000
# The scheduler leader lock; a standby takes over once it lapses.
LEADER_LOCK_TTL_MS = 10_000
# The limiter's grant counter (gemini:limiter:seq) lives this long past the last grant, so a
# quiet night is not mistaken for a lost state; a limiter instance trusts its own memory of the
# counter for as long (issue 13).
LIMITER_EPOCH_TTL_MS = 86_400_000
# Limiter counters (gemini:stats) survive this long without any activity.
STATS_TTL_MS = 7 * 86_400_000


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = ""

    def _k(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # --- Gemini limiter ---
    @property
    def rpm_current(self) -> str:
        """CONTRACT string(int): requests admitted in the current sliding window (the limiter's
        live count, as of its last call; read-only for everyone else)."""
        return self._k("gemini:rpm:current")

    @property
    def tpm_current(self) -> str:
        """CONTRACT string(int): tokens admitted in the current sliding window (the limiter's
        live sum, as of its last call; read-only for everyone else)."""
        return self._k("gemini:tpm:current")

    @property
    def limiter_log(self) -> str:
        """zset "grant id:tokens charged" -> admission time (µs, Redis TIME): the sliding log."""
        return self._k("gemini:limiter:log")

    @property
    def limiter_cum(self) -> str:
        """zset "grant id:admission µs:estimate" -> estimated tokens granted before it: the same
        grants as the log, indexed by running token total (O(log n) retry hints)."""
        return self._k("gemini:limiter:cum")

    @property
    def limiter_waiting(self) -> str:
        """zset "waiter id:tokens" -> first-denial µs: FIFO reservation queue."""
        return self._k("gemini:limiter:waiting")

    @property
    def limiter_waiting_until(self) -> str:
        """hash waiter id -> Redis-time ms its reservation lapses (unless it asks again)."""
        return self._k("gemini:limiter:waiting:until")

    @property
    def limiter_epoch(self) -> str:
        """string: Redis-time ms the restart period (restart_fraction) ends; only during it."""
        return self._k("gemini:limiter:epoch")

    @property
    def limiter_seq(self) -> str:
        """string "grants tokens": grants ever admitted by this state (only grows) and their
        estimated tokens (the running total of gemini:limiter:cum). A limiter that saw more
        grants treats fewer as lost or rolled-back state (one window's pause). The format
        every earlier version reads (a rolling upgrade shares it)."""
        return self._k("gemini:limiter:seq")

    @property
    def limiter_state(self) -> str:
        """string "sum last_id last_us win_ms win_until_ms": the window's settled token sum
        (gemini:tpm:current mirrors it), the newest grant (a grant that must still be in the
        log and is not means lost state), the longest window a recent caller counts over."""
        return self._k("gemini:limiter:state")

    @property
    def cooldown_until(self) -> str:
        """string: Redis-time ms until which no worker may call Gemini (after a 429)."""
        return self._k("gemini:cooldown:until")

    @property
    def cooldown_reason(self) -> str:
        """string: why the current cooldown was set (quota id, retry delay)."""
        return self._k("gemini:cooldown:reason")

    @property
    def stats(self) -> str:
        """hash: counters (grants, denials, 429s, cooldowns, waits) for status and metrics;
        responses_429 counts 429 answers received (issue 14), cooldowns the pauses set."""
        return self._k("gemini:stats")

    def tokens_per_page(self, document_type: str) -> str:
        """string(float): learned input tokens per PDF page for a document type."""
        return self._k(f"gemini:tokens_per_page:{document_type}")

    # --- workers ---
    @property
    def workers(self) -> str:
        """CONTRACT hash: worker id -> JSON (host, pid, mode, document, heartbeat)."""
        return self._k("gemini:workers")

    # --- pool ---
    @property
    def allocation(self) -> str:
        """CONTRACT string(JSON): {"index": n, "acte": m, "total": N, ...} + when and why."""
        return self._k("worker_pool:allocation")

    @property
    def assignments(self) -> str:
        """CONTRACT hash: slot id (ocr-worker-1..N) -> mode (index / acte)."""
        return self._k("worker_pool:assignments")

    @property
    def slot_holders(self) -> str:
        """hash: slot id -> JSON holder (worker id, document, mode held)."""
        return self._k("worker_pool:holders")

    @property
    def slot_leases(self) -> str:
        """zset: slot id -> Redis-time ms when its holder's lease lapses."""
        return self._k("worker_pool:slot_leases")

    @property
    def pending_modes(self) -> str:
        """hash: slot id -> mode it switches to once its current job ends."""
        return self._k("worker_pool:pending_modes")

    def enqueued(self, document_type: str) -> str:
        """zset: documents enqueued on the type's Dramatiq queue, not yet picked up
        (member env/id, score Redis-time ms of the enqueue)."""
        return self._k(f"worker_pool:enqueued:{document_type}")

    def slot_freed(self, document_type: str) -> str:
        """list: one token per slot released, BLPOPed by a job waiting for a slot of the
        type (a wake-up call instead of polling; trimmed short, stale tokens are harmless)."""
        return self._k(f"worker_pool:slot_freed:{document_type}")

    @property
    def job_seconds(self) -> str:
        """hash: document type -> EWMA of the seconds one document holds a slot (for
        OCR_ALLOCATION_WEIGHTING=time); fields "<type>" and "<type>:n" (samples seen)."""
        return self._k("worker_pool:job_seconds")

    @property
    def pool_stats(self) -> str:
        """hash: documents completed / failed / released per type (fields like completed:index)
        and, since issue 14, per environment and type (completed:dev:index, failed:prod:acte)."""
        return self._k("worker_pool:stats")

    # --- capacity ---
    @property
    def cpu_allocated(self) -> str:
        """CONTRACT string(number): vCPUs held by busy slots and external work."""
        return self._k("server:cpu:allocated")

    @property
    def ram_allocated(self) -> str:
        """CONTRACT string(number): GB held by busy slots and external work."""
        return self._k("server:ram:allocated")

    # issue 10 (point 6): each host registers its budget and is accounted on its own.
    @property
    def cpu_allocated_by_host(self) -> str:
        """hash: host (OCR_HOST_NAME) -> vCPUs held there by busy slots and external work.
        Rebuilt from the holders by every slot/capacity script; a host holding nothing has
        no field (reads as 0). `server:cpu:allocated` is the sum over hosts."""
        return self._k("server:cpu:allocated:hosts")

    @property
    def ram_allocated_by_host(self) -> str:
        """hash: host (OCR_HOST_NAME) -> GB held there (like cpu_allocated_by_host)."""
        return self._k("server:ram:allocated:hosts")

    @property
    def hosts(self) -> str:
        """hash: host (OCR_HOST_NAME) -> JSON {cpu, ram, pid, expires_at_ms}: the CPU/RAM budget
        (SERVER_MAX_* minus reserves) each live worker host registered; renewed by its
        workers' heartbeat, dropped HOST_TTL_MS after the last renewal."""
        return self._k("server:hosts")

    @property
    def host_leases(self) -> str:
        """zset: host -> Redis-time ms its budget registration lapses."""
        return self._k("server:hosts:leases")

    # issue 15: measured slot costs (OCR_CAPACITY_COSTS=learned)
    @property
    def slot_costs_learned(self) -> str:
        """hash: "host|type" -> JSON {cpu, ram, samples, updated_ms}: the vCPU and GB one busy
        slot of that type costs on that host, learned from the CPU time and RSS its worker
        processes measure (smoothed, never below a floor; lua/slot_costs_observe.lua)."""
        return self._k("server:costs:learned")

    @property
    def external_usage(self) -> str:
        """hash: external holder id (e.g. registre-1) -> JSON {cpu, ram, kind, host}."""
        return self._k("server:external")

    @property
    def external_leases(self) -> str:
        """zset: external holder id -> Redis-time ms its registration lapses (if it has a TTL)."""
        return self._k("server:external:leases")

    # --- circuit breakers (issue 11, control_plane/breakers.py) ---
    def breaker(self, name: str) -> str:
        """hash: one dependency's breaker (gemini:<model>, gemini:configuration,
        document_host:<host>): failures in a row, open 0/1, probe_at (Redis-time ms), reason."""
        return self._k(f"breaker:{name}")

    @property
    def breakers_open(self) -> str:
        """hash: open breaker name -> why it opened (read by the status block)."""
        return self._k("breaker:open")

    # --- scheduler ---
    @property
    def leader(self) -> str:
        """string: the scheduler instance that holds leadership (PX LEADER_LOCK_TTL_MS)."""
        return self._k("scheduler:leader")

    @property
    def leader_epoch(self) -> str:
        """string(int): the current leader's epoch, raised by each new leader (never down:
        see leader_acquire.lua); allocation versions start from it, leader writes are
        fenced on it."""
        return self._k("scheduler:epoch")


def dramatiq_queue_keys(namespace: str, queue_name: str) -> tuple[str, str]:
    """Dramatiq's own keys of one queue (its Redis broker layout, not under our prefix):
    list `<namespace>:<queue>` of message ids and hash `<namespace>:<queue>.msgs` of
    message id -> encoded message. Written by feed_enqueue.lua, read by Dramatiq."""
    queue = f"{namespace}:{queue_name}"
    return queue, f"{queue}.msgs"
