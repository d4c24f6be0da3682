"""The status block: a snapshot of live state (thin shell) and its rendering (pure).

Printed every OCR_STATUS_INTERVAL_MS by the leader and once by
`python scheduler.py status`. Human output, separate from the event logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from control_plane.config import DOCUMENT_TYPES
from control_plane.pool import by_slot_number

RULE = "=" * 78


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
    # issue 11: open circuit breakers (name -> why); ready documents waiting to retry
    breakers: dict[str, str] = field(default_factory=dict)


def _pct(used: float, limit: float) -> str:
    return f"{(100.0 * used / limit) if limit else 0.0:.1f}%"


def _num(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def warn_thin_pool(pool_size: int, registered_threads: int) -> str | None:
    """The warning shown when the registered worker threads cannot fill the pool."""
    if registered_threads >= pool_size:
        return None
    return (
        f"WARNING: {registered_threads} worker thread(s) registered for a pool of {pool_size}: "
        f"start more (dramatiq actors -p P -t T with P x T >= {pool_size} across hosts)"
    )


def outage_lines(s: StatusSnapshot) -> list[str]:
    """Issue 11, below the seed's lines: documents waiting to retry, paused dependencies."""
    lines = []
    waiting = {t: s.queue.get(t, {}).get("waiting_retry", 0) for t in DOCUMENT_TYPES}
    if any(waiting.values()):
        parts = "  ".join(f"{t} {n:,}" for t, n in waiting.items())
        lines.append(f"Waiting to retry  : {parts}  (ready; claimed after their retry time)")
    for name, why in sorted(s.breakers.items()):
        lines.append(f"Paused            : {name}: {why[:120]}")
    return lines


def render_status(s: StatusSnapshot) -> str:
    """The status block as text."""
    alloc = s.allocation or {}
    lines = [RULE, f"OCR pool status  {s.taken_at:%Y-%m-%d %H:%M:%S} UTC", RULE]
    if alloc:
        parts = "  ".join(f"{t} {alloc.get(t, 0)}" for t in DOCUMENT_TYPES)
        total = alloc.get("total", s.pool_size)
        pool = f"pool {total}" if total == s.pool_size else f"{total} of pool {s.pool_size}"
        lines.append(f"Worker allocation : {parts}  ({pool})")
        if alloc.get("reason"):
            lines.append(f"  reason          : {alloc['reason']}")
    else:
        lines.append(f"Worker allocation : not published yet (pool {s.pool_size})")
    busy = "  ".join(f"{t} {s.busy.get(t, 0)}" for t in DOCUMENT_TYPES)
    lines.append(f"Active workers    : {busy}  (busy slots)")
    if s.queue_error:
        lines.append(f"Queue             : unavailable ({s.queue_error})")
    else:
        q = "  ".join(
            f"{t} ready {s.queue.get(t, {}).get('ready', 0):,} / in flight "
            f"{s.queue.get(t, {}).get('in_flight', 0):,}"
            for t in DOCUMENT_TYPES
        )
        lines.append(f"Queue             : {q}")
    cooldown = f"cooldown {s.cooldown_ms / 1000:.1f}s" if s.cooldown_ms > 0 else "no cooldown"
    lines.append(
        f"Gemini            : RPM {s.rpm_used:,}/{s.rpm_limit:,} ({_pct(s.rpm_used, s.rpm_limit)})"
        f"  TPM {s.tpm_used:,}/{s.tpm_limit:,} ({_pct(s.tpm_used, s.tpm_limit)})  {cooldown}"
    )
    lines.append(
        f"Server capacity   : CPU {_num(s.cpu_used)}/{_num(s.cpu_budget)} vCPU "
        f"({_pct(s.cpu_used, s.cpu_budget)})  RAM {_num(s.ram_used)}/{_num(s.ram_budget)} GB "
        f"({_pct(s.ram_used, s.ram_budget)})"
    )
    registre = sum(1 for e in s.external.values() if e.get("kind", "registre") == "registre")
    by_type = "  ".join(f"{t} {s.workers_by_mode.get(t, 0)}" for t in DOCUMENT_TYPES)
    lines.append(
        f"Workers by type   : {by_type}  registre {registre}  "
        f"(threads registered {s.registered_threads})"
    )
    if s.assignments:
        slots = "  ".join(
            f"{k.removeprefix('ocr-worker-')}:{v}" for k, v in by_slot_number(s.assignments.items())
        )
        lines.append(f"Slots             : {slots}")
    if s.leader:
        lines.append(f"Scheduler leader  : {s.leader}")
    lines.extend(outage_lines(s))
    warning = warn_thin_pool(s.pool_size, s.registered_threads)
    if warning:
        lines.append(warning)
    lines.append(RULE)
    return "\n".join(lines)


def now_utc() -> datetime:
    return datetime.now(UTC)
