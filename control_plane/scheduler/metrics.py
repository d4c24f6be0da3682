"""Prometheus metrics of the scheduler, on OCR_SCHEDULER_METRICS_PORT (0 = off).

Gauges are refreshed from the status snapshot (live Redis and queue state);
counters count what this process did (documents fed, leases reaped) or mirror
the limiter's shared counters in Redis (429s, wait time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from control_plane.config import DOCUMENT_TYPES
from control_plane.logs import log_event

if TYPE_CHECKING:
    from control_plane.scheduler.status import StatusSnapshot


class SchedulerMetrics:
    """The scheduler's series, in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.allocation_slots = Gauge(
            "ocr_allocation_slots", "Slots allocated per type", ["type"], registry=r
        )
        self.queue_ready = Gauge(
            "ocr_queue_ready", "Documents ready for OCR", ["type", "environment"], registry=r
        )
        self.queue_in_flight = Gauge(
            "ocr_queue_in_flight", "Documents claimed", ["type", "environment"], registry=r
        )
        self.slots_busy = Gauge("ocr_slots_busy", "Busy slots per type", ["type"], registry=r)
        self.requests_window = Gauge(
            "ocr_gemini_requests_window", "Gemini requests in the sliding window", registry=r
        )
        self.tokens_window = Gauge(
            "ocr_gemini_tokens_window", "Gemini input tokens in the sliding window", registry=r
        )
        self.rpm_limit = Gauge(
            "ocr_gemini_rpm_limit", "Requests per window the limiter enforces", registry=r
        )
        self.tpm_limit = Gauge(
            "ocr_gemini_tpm_limit", "Input tokens per window the limiter enforces", registry=r
        )
        self.cooldown = Gauge(
            "ocr_gemini_cooldown_seconds", "Remaining shared cooldown", registry=r
        )
        self.quota_429 = Gauge(
            "ocr_gemini_429_total",
            "429 answers Gemini gave all workers (not cooldowns)",
            registry=r,
        )
        self.wait_seconds = Gauge(
            "ocr_limiter_wait_seconds_total", "Seconds workers waited on the limiter", registry=r
        )
        self.cpu_allocated = Gauge("ocr_capacity_cpu_allocated", "vCPU held", registry=r)
        self.ram_allocated = Gauge("ocr_capacity_ram_allocated", "GB held", registry=r)
        self.cpu_budget = Gauge("ocr_capacity_cpu_budget", "vCPU budget", registry=r)
        self.ram_budget = Gauge("ocr_capacity_ram_budget", "GB budget", registry=r)
        self.leases_reaped = Counter(
            "ocr_leases_reaped", "Expired leases reaped", ["environment"], registry=r
        )
        self.documents_fed = Counter(
            "ocr_documents_fed", "Documents claimed and enqueued", ["type"], registry=r
        )
        self.completed = Gauge(
            "ocr_documents_completed_total",
            "Documents completed (workers' shared count)",
            ["type"],
            registry=r,
        )
        self.failed = Gauge(
            "ocr_documents_failed_total",
            "Documents failed (workers' shared count)",
            ["type"],
            registry=r,
        )
        # issue 14: leadership, job freshness, documents per environment, real 429s, breakers
        self.leader = Gauge(
            "ocr_scheduler_leader",
            "1 on the scheduler that leads, 0 on a standby",
            ["instance_id"],
            registry=r,
        )
        self.leader_epoch = Gauge(
            "ocr_scheduler_leader_epoch", "Epoch of the current leadership", registry=r
        )
        self.last_success = Gauge(
            "ocr_last_success_timestamp_seconds",
            "Unix time of the last successful feed / reap / rebalance per environment",
            ["step", "environment"],
            registry=r,
        )
        self.snapshot_time = Gauge(
            "ocr_status_snapshot_timestamp_seconds",
            "Unix time the live gauges were last refreshed (frozen gauges show here)",
            registry=r,
        )
        self.documents = Gauge(
            "ocr_documents_total",
            "Documents finished per environment, type and outcome (workers' shared count)",
            ["environment", "type", "outcome"],
            registry=r,
        )
        self.cooldowns = Gauge(
            "ocr_gemini_cooldowns_total", "Shared cooldowns set after 429s", registry=r
        )
        self.breaker_state = Gauge(
            "ocr_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["breaker"],
            registry=r,
        )
        # issue 15: the autopilot's chosen size, its API target and the binding constraint
        self.autopilot_size = Gauge(
            "ocr_autopilot_pool_size", "Pool size chosen by the autopilot", registry=r
        )
        self.autopilot_target = Gauge(
            "ocr_autopilot_api_target", "API usage the autopilot aims at (0-1)", registry=r
        )
        self.autopilot_api_usage = Gauge(
            "ocr_autopilot_api_usage", "API usage the autopilot measured (0-1)", registry=r
        )
        self.autopilot_constraint = Gauge(
            "ocr_autopilot_constraint",
            "1 for the constraint binding the autopilot's size, 0 for the others",
            ["constraint"],
            registry=r,
        )
        self.slot_cost_learned = Gauge(
            "ocr_slot_cost_learned",
            "Learned cost of one busy slot (OCR_CAPACITY_COSTS=learned), per host and type",
            ["host", "type", "resource"],
            registry=r,
        )
        self._server: Any = None

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other hosts
        if port <= 0:
            return
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log_event(
                "metrics.unavailable",
                f"metrics port {port} not served: {exc.strerror}",
                level="WARNING",
                port=port,
            )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def allocation(self, allocation: dict[str, int]) -> None:
        for t in DOCUMENT_TYPES:
            self.allocation_slots.labels(type=t).set(allocation.get(t, 0))

    def autopilot(self, decision: Any, api_target: float) -> None:
        """issue 15: size, target and binding constraint of the last decision."""
        self.autopilot_size.set(decision.size)
        self.autopilot_target.set(api_target)
        self.autopilot_api_usage.set(decision.api_usage)
        kind = decision.constraint.split(":", 1)[0]
        names = ("start", "429", "api", "cpu", "ram", "threads", "demand", "growth", "max")
        for name in (*names, "settling"):
            self.autopilot_constraint.labels(constraint=name).set(1 if name == kind else 0)

    def fed(self, document_type: str, count: int) -> None:
        self.documents_fed.labels(type=document_type).inc(count)

    def reaped(self, environment: str, count: int) -> None:
        self.leases_reaped.labels(environment=environment).inc(count)

    def observe(self, snap: StatusSnapshot, limiter: Any) -> None:
        """Refresh the gauges from a status snapshot and the limiter's shared counters."""
        for t in DOCUMENT_TYPES:
            self.slots_busy.labels(type=t).set(snap.busy.get(t, 0))
        for env, by_type in snap.queue_by_environment.items():
            for t, counts in by_type.items():
                self.queue_ready.labels(type=t, environment=env).set(counts.get("ready", 0))
                self.queue_in_flight.labels(type=t, environment=env).set(counts.get("in_flight", 0))
        for t in DOCUMENT_TYPES:
            self.completed.labels(type=t).set(snap.documents.get(f"completed:{t}", 0))
            self.failed.labels(type=t).set(snap.documents.get(f"failed:{t}", 0))
        self.requests_window.set(snap.rpm_used)
        self.tokens_window.set(snap.tpm_used)
        self.rpm_limit.set(snap.rpm_limit)
        self.tpm_limit.set(snap.tpm_limit)
        self.cooldown.set(snap.cooldown_ms / 1000)
        self.cpu_allocated.set(snap.cpu_used)
        self.ram_allocated.set(snap.ram_used)
        self.cpu_budget.set(snap.cpu_budget)
        self.ram_budget.set(snap.ram_budget)
        stats = getattr(limiter, "stats", None)
        if callable(stats):
            values = stats()
            self.quota_429.set(float(values.get("responses_429", 0)))
            self.cooldowns.set(float(values.get("cooldowns", 0)))
            self.wait_seconds.set(float(values.get("wait_ms_total", 0)) / 1000)
        for (env, t, outcome), count in documents_by_environment(snap.documents).items():
            self.documents.labels(environment=env, type=t, outcome=outcome).set(count)
        for name, state in (snap.circuit_breakers or {}).items():
            self.breaker_state.labels(breaker=name).set(breaker_level(state))
        for host, entry in (snap.hosts or {}).items():  # issue 15: learned slot costs
            for t, (cpu, ram) in (entry.get("learned") or {}).items():
                self.slot_cost_learned.labels(host=host, type=t, resource="cpu").set(cpu)
                self.slot_cost_learned.labels(host=host, type=t, resource="ram").set(ram)
        self.snapshot_time.set(snap.taken_at.timestamp())

    def leadership(self, owner: str, leading: bool, epoch: int | None) -> None:
        """Every scheduler says whether it leads, and the epoch of the current leadership."""
        self.leader.labels(instance_id=owner).set(1 if leading else 0)
        if epoch is not None:
            self.leader_epoch.set(epoch)

    def succeeded(self, job: str, environments: list[str], at: float) -> None:
        """A feed / reap / rebalance pass reached these environments at Unix time `at`."""
        for env in environments:
            self.last_success.labels(step=job, environment=env).set(at)


BREAKER_LEVELS = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}


def breaker_level(state: Any) -> int:
    """A breaker state (word, or dict with "state") as the gauge's number; unknown = open."""
    word = state.get("state") if isinstance(state, dict) else state
    return BREAKER_LEVELS.get(str(word).lower(), 2)


def documents_by_environment(fields: dict[str, int]) -> dict[tuple[str, str, str], int]:
    """pool_stats fields "completed:dev:index" -> {("dev", "index", "completed"): n}."""
    found: dict[tuple[str, str, str], int] = {}
    for name, count in fields.items():
        parts = name.split(":")
        if len(parts) == 3 and parts[0] in ("completed", "failed"):
            found[(parts[1], parts[2], parts[0])] = int(count)
    return found
