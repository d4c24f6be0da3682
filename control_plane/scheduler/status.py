"""The status block: a snapshot of live state (thin shell) and its rendering (pure).

Printed every OCR_STATUS_INTERVAL_MS by the leader and once by
`python scheduler.py status`. Human output, separate from the event logs.
The seed's sections come first, with its labels and number formats
(`RPM: 12 / 1600 (0.8%)`, `TPM: 180,000 / 6,400,000 (2.8%)`,
`CPU: 5.5 / 6.4 vCPUs (85.9%)`); our additions follow them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from control_plane.config import DOCUMENT_TYPES
from control_plane.pool import by_slot_number, slot_number
from control_plane.scheduler.screens import RULE, amount, mark, pct

__all__ = ["RULE", "StatusSnapshot", "now_utc", "render_status", "warn_thin_pool"]


@dataclass
class StatusSnapshot:
    """Everything the status block shows, read from Redis and the queue."""

    taken_at: datetime
    pool_size: int
    allocation: dict[str, Any] | None
    assignments: dict[str, str]
    busy: dict[str, int]
    registered_threads: int
    workers_by_mode: dict[str, int]
    external: dict[str, dict[str, Any]]
    rpm_used: int
    tpm_used: int
    rpm_limit: int
    tpm_limit: int
    cooldown_ms: int
    cpu_used: float
    ram_used: float
    cpu_budget: float
    ram_budget: float
    queue: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> ready / in_flight
    queue_error: str | None = None
    leader: str | None = None
    enqueued: dict[str, int] = field(default_factory=dict)
    # environment -> type -> {"ready", "in_flight"}
    queue_by_environment: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    # completed:index, failed:acte, ... as counted by the workers
    documents: dict[str, int] = field(default_factory=dict)
    leader_epoch: int | None = None
    cooldown_reason: str | None = None
    # Optional sections filled by features wired at merge time; each is shown only when set.
    # name -> state ("closed", "open", "half_open") or {"state": ..., other fields}
    circuit_breakers: dict[str, Any] | None = None
    # host -> {"cpu_used", "cpu_budget", "ram_used", "ram_budget", ...}
    hosts: dict[str, dict[str, Any]] | None = None
    # free-form key -> value from the autopilot
    autopilot: dict[str, Any] | None = None
    # issue 12: one line per environment, "dev ok" / "prod BROKEN (why; retry in Ns)"
    environments: list[str] = field(default_factory=list)


def warn_thin_pool(pool_size: int, registered_threads: int) -> str | None:
    """The warning shown when the registered worker threads cannot fill the pool."""
    if registered_threads >= pool_size:
        return None
    return (
        f"WARNING: {registered_threads} worker thread(s) registered for a pool of {pool_size}: "
        f"start more (dramatiq actors -p P -t T with P x T >= {pool_size} across hosts)"
    )


def ordered_slots(assignments: dict[str, str]) -> list[tuple[str, str]]:
    """ocr-worker-1, ocr-worker-2, ... ocr-worker-10 in number order."""
    return by_slot_number(assignments.items())


def render_status(s: StatusSnapshot, *, emoji: bool = True) -> str:
    """The status block as text: the seed's sections, then ours."""
    return "\n".join([*seed_status_lines(s, emoji), *our_status_lines(s, emoji), RULE])


def seed_status_lines(s: StatusSnapshot, emoji: bool) -> list[str]:
    """The seed's block without its closing rule, label for label."""
    alloc = s.allocation or {}
    active = {t: sum(1 for m in s.assignments.values() if m == t) for t in DOCUMENT_TYPES}
    registre = sum(1 for e in s.external.values() if e.get("kind", "registre") == "registre")
    return [
        RULE,
        mark("📊", "WORKER POOL STATUS", emoji),
        RULE,
        "",
        mark("🎯", "Worker Allocation:", emoji),
        f"   Index workers: {_count(alloc.get('index'))}",
        f"   Acte workers: {_count(alloc.get('acte'))}",
        f"   Active workers: {sum(active.values())}",
        f"     - Index: {active['index']}",
        f"     - Acte: {active['acte']}",
        "",
        mark("📡", "Gemini API Usage:", emoji),
        f"   RPM: {s.rpm_used} / {s.rpm_limit} ({pct(s.rpm_used, s.rpm_limit)})",
        f"   TPM: {s.tpm_used:,} / {s.tpm_limit:,} ({pct(s.tpm_used, s.tpm_limit)})",
        "",
        mark("💾", "Server Capacity:", emoji),
        f"   CPU: {amount(s.cpu_used)} / {amount(s.cpu_budget)} vCPUs "
        f"({pct(s.cpu_used, s.cpu_budget)})",
        f"   RAM: {amount(s.ram_used)} / {amount(s.ram_budget)} GB "
        f"({pct(s.ram_used, s.ram_budget)})",
        "   Workers by type:",
        f"     - Registre: {registre}",
        f"     - Index OCR: {s.busy.get('index', 0)}",
        f"     - Acte OCR: {s.busy.get('acte', 0)}",
        "",
    ]


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def our_status_lines(s: StatusSnapshot, emoji: bool) -> list[str]:
    """Our additions, below the seed's sections."""
    alloc = s.allocation or {}
    lines = [mark("🕒", f"Taken at: {s.taken_at:%Y-%m-%d %H:%M:%S} UTC", emoji)]
    if not alloc:
        lines.append(f"   Allocation: not published yet (pool {s.pool_size})")
    else:
        total = alloc.get("total", s.pool_size)
        lines.append(f"   Allocation: {total} of pool {s.pool_size}")
        if alloc.get("reason"):
            lines.append(f"   Reason: {alloc['reason']}")
    lines += ["", mark("📥", "Queue (ready / in flight):", emoji)]
    if s.queue_error:
        lines.append(f"   unavailable ({s.queue_error})")
    else:
        for t in DOCUMENT_TYPES:
            q = s.queue.get(t, {})
            lines.append(
                f"   {t.capitalize()}: {q.get('ready', 0):,} / {q.get('in_flight', 0):,}"
                f" (enqueued {s.enqueued.get(t, 0)})"
            )
        waiting = {t: s.queue.get(t, {}).get("waiting_retry", 0) for t in DOCUMENT_TYPES}
        if any(waiting.values()):  # issue 11: ready, claimed after their retry time
            parts = ", ".join(f"{t} {n:,}" for t, n in waiting.items())
            lines.append(f"   Waiting to retry: {parts}")
        for env in sorted(s.queue_by_environment):
            by_type = s.queue_by_environment[env]
            parts = ", ".join(
                f"{t} {by_type.get(t, {}).get('ready', 0):,} / "
                f"{by_type.get(t, {}).get('in_flight', 0):,}"
                for t in DOCUMENT_TYPES
            )
            lines.append(f"     - {env}: {parts}")
    done = ", ".join(
        f"{t} {s.documents.get(f'completed:{t}', 0):,} done / "
        f"{s.documents.get(f'failed:{t}', 0):,} failed"
        for t in DOCUMENT_TYPES
    )
    lines.append(f"   Documents: {done}")
    if s.environments:
        lines += ["", mark("🌐", "Environments:", emoji)]
        lines.extend(f"   {line}" for line in s.environments)
    lines += ["", mark("🧩", "Slots:", emoji)]
    if s.assignments:
        lines.append(
            "   " + "  ".join(f"{slot_number(k)}:{v}" for k, v in ordered_slots(s.assignments))
        )
    busy = ", ".join(f"{t} {s.busy.get(t, 0)}" for t in DOCUMENT_TYPES)
    lines.append(f"   Busy: {busy}")
    modes = ", ".join(f"{t} {s.workers_by_mode.get(t, 0)}" for t in DOCUMENT_TYPES)
    lines.append(f"   Threads registered: {s.registered_threads} ({modes})")
    lines += ["", mark("👑", "Scheduler:", emoji)]
    if s.leader:
        epoch = f" (epoch {s.leader_epoch})" if s.leader_epoch is not None else ""
        lines.append(f"   Leader: {s.leader}{epoch}")
    else:
        lines.append("   Leader: none (start python scheduler.py)")
    if s.cooldown_ms > 0:
        why = f" ({s.cooldown_reason})" if s.cooldown_reason else ""
        lines.append(f"   Limiter cooldown: {s.cooldown_ms / 1000:.1f}s{why}")
    else:
        lines.append("   Limiter cooldown: none")
    if s.circuit_breakers:
        lines += ["", mark("🔌", "Circuit breakers:", emoji)]
        for name in sorted(s.circuit_breakers):
            lines.append(f"   {name}: {_state(s.circuit_breakers[name])}")
    if s.hosts:
        lines += ["", mark("🖥️", "Hosts:", emoji)]
        for host in sorted(s.hosts):
            h = s.hosts[host]
            lines.append(
                f"   {host}: CPU {amount(float(h.get('cpu_used', 0)))} / "
                f"{amount(float(h.get('cpu_budget', 0)))} vCPUs, RAM "
                f"{amount(float(h.get('ram_used', 0)))} / "
                f"{amount(float(h.get('ram_budget', 0)))} GB" + _learned(h.get("learned"))
            )
    if s.autopilot:
        # issue 15: "Autopilot: pool 12, limited by API usage 78% (target 80%)"
        head = f"Autopilot: {s.autopilot['line']}" if "line" in s.autopilot else "Autopilot:"
        lines += ["", mark("🧭", head, emoji)]
        for key in sorted(k for k in s.autopilot if k != "line"):
            lines.append(f"   {key}: {s.autopilot[key]}")
    warning = warn_thin_pool(s.pool_size, s.registered_threads)
    if warning:
        lines += ["", mark("⚠️", warning, emoji)]
    lines.append("")
    return lines


def _learned(costs: Any) -> str:
    """issue 15: ", learned index 0.3 vCPU / 0.2 GB, acte ..." (nothing when not learned)."""
    if not costs:
        return ""
    parts = [
        f"{t} {amount(float(costs[t][0]))} vCPU / {amount(float(costs[t][1]))} GB"
        for t in sorted(costs)
    ]
    return ", learned " + ", ".join(parts)


def _state(value: Any) -> str:
    """A breaker or environment state: a word, or a dict with a `state` and details."""
    if isinstance(value, dict):
        head = str(value.get("state", "?"))
        rest = ", ".join(f"{k} {v}" for k, v in sorted(value.items()) if k != "state")
        return f"{head} ({rest})" if rest else head
    return str(value)


def now_utc() -> datetime:
    return datetime.now(UTC)
