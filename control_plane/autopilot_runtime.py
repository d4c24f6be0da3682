"""Autopilot (issue 15): the scheduler's thin shell around `decide_pool_size`.

At each rebalance the leader measures (busy slots, ready documents, the limiter's
window usage, 429s since the last decision, the cooldown, each live host's
allocated CPU/RAM against its registered budget, worker threads registered),
decides the pool size and keeps it for the allocation it publishes. The size
travels in `worker_pool:allocation` (field `autopilot`), so a new leader goes on
from it instead of starting small again. Each change is logged once
(`autopilot.changed`) with its reason.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from math import isfinite
from typing import TYPE_CHECKING, Any

from control_plane.autopilot import Decision, Limits, Measurements, decide_pool_size
from control_plane.capacity import live_hosts
from control_plane.config import DOCUMENT_TYPES
from control_plane.logs import log_event

if TYPE_CHECKING:
    import redis

    from control_plane.config import Settings
    from control_plane.keys import Keys
    from control_plane.pool import WorkerPool
    from control_plane.rate_limiter import GeminiRateLimiter
    from control_plane.workers import WorkerRegistry


def limits_from(settings: Settings) -> Limits:
    return Limits(
        minimum=settings.pool_minimum,
        maximum=settings.ocr_worker_pool_max,
        api_target=settings.autopilot_api_fraction,
    )


def host_loads(
    budgets: Mapping[str, tuple[float, float]], usage: Mapping[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Pure: host -> (CPU, RAM) fractions of its budget (a zero budget, or one so small the
    fraction is not a finite number, counts as full when anything is used)."""

    def fraction(used: float, budget: float) -> float:
        value = used / budget if budget > 0 else float("inf")
        if isfinite(value):
            return value
        return 1.0 if used > 0 else 0.0

    out = {}
    for host, (cpu_budget, ram_budget) in budgets.items():
        cpu, ram = usage.get(host, (0.0, 0.0))
        out[host] = (fraction(cpu, cpu_budget), fraction(ram, ram_budget))
    return out


def working_slots(
    busy: Mapping[str, float], slots: Mapping[str, float], ready: Mapping[str, int]
) -> float:
    """Pure: the slots that made the window's API usage, per type averaged over the window:
    all of a type's slots while its documents wait (an idle one is the feed's gap, which a
    larger pool has too), only its busy ones when nothing of that type waits (an idle slot
    there makes no request and never will)."""
    return sum(
        max(slots.get(t, 0.0), n) if ready.get(t, 0) > 0 else n for t, n in busy.items()
    ) + sum(n for t, n in slots.items() if t not in busy and ready.get(t, 0) > 0)


def window_scale(measured_s: float, window_s: float) -> float:
    """Pure: how much to scale a window's counts when only `measured_s` of it was seen
    (at most 10x, for the first instants; 1 once a whole window was seen)."""
    if window_s <= 0 or measured_s >= window_s:
        return 1.0
    return min(10.0, window_s / max(measured_s, window_s / 10))


class Autopilot:
    """Keeps the chosen size between rebalances (leader side)."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        keys: Keys,
        pool: WorkerPool,
        limiter: GeminiRateLimiter,
        registry: WorkerRegistry,
    ) -> None:
        self.limits = limits_from(settings)
        self._client = client
        self._keys = keys
        self._pool = pool
        self._limiter = limiter
        self._registry = registry
        self.decision: Decision | None = None
        self._seen_429s: int | None = None
        # busy-slot samples (monotonic s, count) over the limiter's window: API usage spans
        # the window, so the slots that made it are the window's average, not this instant's
        self._window_s = settings.gemini_rate_window_ms / 1000
        # (t, busy per type, slots per type)
        self._busy: deque[tuple[float, dict[str, int], dict[str, int]]] = deque()
        self._since: float | None = None  # when this leader started measuring
        self._shrunk_at: float | None = None  # when the last decision shrank the pool

    @property
    def size(self) -> int:
        """The size to plan with: ours, else the published one, else the start size."""
        if self.decision is not None:
            return self.decision.size
        published = self.previous_size()
        start = published if published is not None else self.limits.start
        return max(self.limits.minimum, min(self.limits.maximum, start))

    def note_busy(
        self,
        busy: Mapping[str, int],
        slots: Mapping[str, int] | None = None,
        now: float | None = None,
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Record the busy slots per type (the feed does, every pass) with the slots in force
        per type (the published allocation, which capacity may hold under the chosen size;
        the busy ones when none is published yet); returns the window's averages per type
        (busy, slots)."""
        now = time.monotonic() if now is None else now
        held = {t: max(0, int(n)) for t, n in busy.items()}
        given = slots if slots is not None else held
        types = set(held) | set(given)
        in_force = {t: max(int(given.get(t, 0)), held.get(t, 0)) for t in types}
        self._busy.append((now, held, in_force))
        while self._busy and self._busy[0][0] < now - self._window_s:
            self._busy.popleft()
        n = len(self._busy)
        avg_busy: dict[str, float] = {}
        avg_slots: dict[str, float] = {}
        for _, b, sl in self._busy:
            for t, v in b.items():
                avg_busy[t] = avg_busy.get(t, 0.0) + v / n
            for t, v in sl.items():
                avg_slots[t] = avg_slots.get(t, 0.0) + v / n
        return avg_busy, avg_slots

    def _published(self) -> tuple[int | None, dict[str, int] | None]:
        """The published allocation's autopilot size and its slots per type."""
        published = self._pool.read_allocation() or {}
        auto = published.get("autopilot")
        size = (
            int(auto["size"])
            if isinstance(auto, dict) and isinstance(auto.get("size"), int)
            else None
        )
        slots = {t: int(published[t]) for t in DOCUMENT_TYPES if isinstance(published.get(t), int)}
        return size, (slots or None)

    def measure(
        self, queued: Mapping[str, int], slots: Mapping[str, int] | None = None
    ) -> Measurements:
        """What this rebalance sees; `slots`: the published allocation per type."""
        busy_by_type = self._pool.busy_slots()
        busy_now = sum(busy_by_type.values())
        avg_busy, avg_slots = self.note_busy(busy_by_type, slots)
        busy = sum(avg_busy.values())
        size_avg = working_slots(avg_busy, avg_slots, queued)
        rpm, tpm, span_ms, cooldown_ms = self._limiter.window_usage()
        # Less than a window of grants yet (a fresh start): the window's counts cover only
        # that much time, so they are scaled up to a whole window (never down). The span is
        # the longer of what this leader measured and the age of the window's oldest grant:
        # a new leader takes over a window the last one filled, which needs no scaling.
        now = time.monotonic()
        if self._since is None:
            self._since = now
        scale = window_scale(max(now - self._since, span_ms / 1000), self._window_s)
        rpm, tpm = round(rpm * scale), round(tpm * scale)
        stats = self._limiter.stats()
        total_429s = int(stats.get("responses_429", 0))
        new_429s = 0 if self._seen_429s is None else max(0, total_429s - self._seen_429s)
        self._seen_429s = total_429s
        hosts = live_hosts(self._client, self._keys)
        usage = self._pool.usage_by_host()
        loads = host_loads({h.host: (h.cpu, h.ram) for h in hosts}, usage)
        return Measurements(
            busy=busy,
            busy_now=busy_now,
            size_avg=size_avg,
            ready=sum(max(0, int(n)) for n in queued.values()),
            rpm_used=rpm,
            tpm_used=tpm,
            rpm_limit=self._limiter.rpm_limit,
            tpm_limit=self._limiter.tpm_limit,
            new_429s=new_429s,
            cooldown_ms=cooldown_ms,
            host_load=loads,
            registered_threads=len(self._registry.all()),
            settling=self._shrunk_at is not None and now - self._shrunk_at < self._window_s,
        )

    def previous_size(self) -> int | None:
        """Ours, or the one the last leader published (a takeover goes on from it)."""
        if self.decision is not None:
            return self.decision.size
        return self._published()[0]

    def _forget_if_taken_over(self, published: int | None) -> None:
        """Another leader published a size since our last decision (we lost the lease and
        won it back): go on from its size and measure afresh (its 429s were its own)."""
        if self.decision is None:
            return
        if published is not None and published != self.decision.size:
            self.decision = None
            self._busy.clear()
            self._since = self._seen_429s = self._shrunk_at = None

    def step(self, queued: Mapping[str, int]) -> Decision:
        """Measure, decide, log a change once; returns the decision."""
        published, slots = self._published()  # one read of the allocation per rebalance
        self._forget_if_taken_over(published)
        before = self.decision.size if self.decision is not None else published
        measured = self.measure(queued, slots)
        decision = decide_pool_size(before, measured, self.limits)
        if before is not None and decision.size < before:
            self._shrunk_at = time.monotonic()
        log_event(
            "autopilot.measured",
            decision.detail,
            level="DEBUG",
            size=decision.size,
            busy_avg=round(measured.busy, 2),
            size_avg=round(measured.size_avg or 0, 2),
            busy_now=measured.busy_now,
            ready=measured.ready,
            rpm_used=measured.rpm_used,
            tpm_used=measured.tpm_used,
            settling=measured.settling,
        )
        if decision.size != before:
            log_event(
                "autopilot.changed",
                f"pool {before if before is not None else '-'} -> {decision.size}: "
                f"{decision.detail}",
                previous=before,
                size=decision.size,
                constraint=decision.constraint,
                api_usage=round(decision.api_usage, 4),
                busy_avg=round(measured.busy, 2),
                busy_now=measured.busy_now,
                ready=measured.ready,
            )
        self.decision = decision
        return decision

    def published_fields(self) -> dict[str, Any]:
        d = self.decision
        return {
            "size": self.size,
            "constraint": d.constraint if d else "start",
            "detail": d.detail if d else "start",
            "min": self.limits.minimum,
            "max": self.limits.maximum,
            "api_target": self.limits.api_target,
        }

    def status(self) -> dict[str, Any]:
        """For StatusSnapshot.autopilot: the status line and the figures behind it."""
        d = self.decision
        if d is not None:
            line = d.line
        else:  # not the leader (`scheduler.py status`, a standby): the published decision
            published = (self._pool.read_allocation() or {}).get("autopilot")
            if isinstance(published, dict) and "size" in published:
                line = f"pool {published['size']}, limited by {published.get('detail', '?')}"
            else:
                line = f"pool {self.size}, not decided yet"
        return {
            "line": line,
            "range": f"{self.limits.minimum}..{self.limits.maximum}",
            "api target": f"{round(100 * self.limits.api_target)}%",
        }
