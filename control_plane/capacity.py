"""The host's CPU/RAM budget: plan within it (pure) and account for it (Redis).

Budget = max x (1 - reserve%) (`Settings.cpu_budget` / `ram_budget`), per host:
each worker host (`OCR_HOST_NAME`) registers its own budget in `server:hosts`
(with a TTL its heartbeat renews) and the scheduler fits the allocation to the
sum of the live hosts' budgets (`pool_budget`). Busy pool slots and registered
external work (e.g. registre workers) carry the host they run on; every script
that changes them rebuilds the sums from the holders, in total
(`server:cpu:allocated` / `server:ram:allocated`) and per host
(`server:cpu:allocated:hosts` / `server:ram:allocated:hosts`), and a slot or an
external share is admitted only if it fits the budget of ITS host, checked and
written in one step. Sums are stored rounded to 6 decimals ("5.5", not
"5.499999999").
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from math import isfinite
from typing import TYPE_CHECKING, Any

import redis

from control_plane.keys import Keys
from control_plane.logs import log_event
from control_plane.scripts import ScriptSet

if TYPE_CHECKING:
    from control_plane.config import Settings

# Float sums are compared with this slack so 4 x 1.6 fits a budget of 6.4.
EPSILON = 1e-9


def fits(
    allocation: Mapping[str, int],
    costs: Mapping[str, tuple[float, float]],
    cpu_budget: float,
    ram_budget: float,
) -> bool:
    """True if every slot of `allocation` busy at once stays within both budgets."""
    cpu, ram = plan_cost(allocation, costs)
    return cpu <= cpu_budget + EPSILON and ram <= ram_budget + EPSILON


def plan_cost(
    allocation: Mapping[str, int], costs: Mapping[str, tuple[float, float]]
) -> tuple[float, float]:
    """(vCPU, GB) the plan uses with every slot busy."""
    cpu = sum(n * costs[t][0] for t, n in allocation.items())
    ram = sum(n * costs[t][1] for t, n in allocation.items())
    return cpu, ram


def fit_allocation(
    allocation: Mapping[str, int],
    costs: Mapping[str, tuple[float, float]],
    cpu_budget: float,
    ram_budget: float,
    minimums: Mapping[str, int] | None = None,
) -> tuple[dict[str, int], bool]:
    """Shrink a plan until all its slots busy at once fit the budget.

    Returns ``(fitted, capacity_bound)``. Slots are removed one at a time from a
    type whose removal relieves an exceeded dimension, preferring types above
    their minimum (minimums are kept while the budget allows), then the type that
    has lost the smallest share of its planned slots (so the queue's split is kept
    as far as possible). A final pass adds back any removed slot that fits again,
    so no budget is left unused by an early coarse removal.
    """
    mins = dict(minimums or {})
    _validate(allocation, costs, cpu_budget, ram_budget, mins)
    planned = {t: int(n) for t, n in allocation.items()}
    fitted = dict(planned)
    order = list(planned)  # ties: the caller's order (index before acte)

    def kept_share(t: str) -> float:
        return fitted[t] / planned[t] if planned[t] else 0.0

    while not fits(fitted, costs, cpu_budget, ram_budget):
        cpu, ram = plan_cost(fitted, costs)
        over_cpu, over_ram = cpu > cpu_budget + EPSILON, ram > ram_budget + EPSILON

        def relieves(t: str, over_cpu: bool = over_cpu, over_ram: bool = over_ram) -> bool:
            c, r = costs[t]
            return fitted[t] > 0 and ((over_cpu and c > 0) or (over_ram and r > 0))

        helpful = [t for t in order if relieves(t)]
        above_min = [t for t in helpful if fitted[t] > mins.get(t, 0)]
        candidates = above_min or helpful
        if not candidates:  # pragma: no cover - only zero-cost slots left, which always fit
            break
        victim = max(
            candidates,
            key=lambda t: (kept_share(t), _relief(t, costs, over_cpu, over_ram), -order.index(t)),
        )
        fitted[victim] -= 1

    # Add back what fits again, most-shrunk type first.
    grew = True
    while grew:
        grew = False
        for t in sorted((t for t in order if fitted[t] < planned[t]), key=kept_share):
            trial = {**fitted, t: fitted[t] + 1}
            if fits(trial, costs, cpu_budget, ram_budget):
                fitted = trial
                grew = True
                break
    return fitted, fitted != planned


def _relief(
    t: str, costs: Mapping[str, tuple[float, float]], over_cpu: bool, over_ram: bool
) -> float:
    c, r = costs[t]
    return (c if over_cpu else 0.0) + (r if over_ram else 0.0)


def _validate(
    allocation: Mapping[str, int],
    costs: Mapping[str, tuple[float, float]],
    cpu_budget: float,
    ram_budget: float,
    mins: Mapping[str, int],
) -> None:
    for name, budget in (("cpu_budget", cpu_budget), ("ram_budget", ram_budget)):
        if not isfinite(budget) or budget < 0:
            raise ValueError(f"{name} must be a non-negative number, got {budget!r}")
    for t, n in allocation.items():
        if t not in costs:
            raise ValueError(f"no cost configured for document type {t!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"allocation[{t!r}] must be a non-negative integer, got {n!r}")
        c, r = costs[t]
        if not (isfinite(c) and isfinite(r)) or c < 0 or r < 0:
            raise ValueError(f"costs[{t!r}] must be non-negative numbers, got {costs[t]!r}")
    for t, n in mins.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"minimums[{t!r}] must be a non-negative integer, got {n!r}")


def format_amount(value: float) -> str:
    """The way the Lua scripts store sums: 6 decimals, trailing zeros dropped."""
    text = f"{max(value, 0.0):.6f}".rstrip("0").rstrip(".")
    return text or "0"


class Capacity:
    """Reads the host's allocated CPU/RAM and lets external work register its share."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        cpu_budget: float,
        ram_budget: float,
        host: str | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = ScriptSet(client)
        self.cpu_budget = float(cpu_budget)
        self.ram_budget = float(ram_budget)
        # External work registers on this host, within this host's budget (issue 10).
        self.host = host if host else socket.gethostname()

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings, keys: Keys) -> Capacity:
        return cls(
            client,
            keys,
            cpu_budget=settings.cpu_budget,
            ram_budget=settings.ram_budget,
            host=settings.ocr_host_name,
        )

    @property
    def _external_keys(self) -> list[str]:
        k = self._keys
        return [
            k.cpu_allocated,
            k.ram_allocated,
            k.external_usage,
            k.external_leases,
            k.slot_holders,
            k.cpu_allocated_by_host,
            k.ram_allocated_by_host,
        ]

    def usage(self) -> tuple[float, float]:
        """(vCPU, GB) currently allocated to busy slots and external work."""
        cpu, ram = self._client.mget([self._keys.cpu_allocated, self._keys.ram_allocated])
        return float(cpu or 0), float(ram or 0)

    def register_external(
        self,
        holder_id: str,
        cpu: float,
        ram: float,
        kind: str = "registre",
        ttl_ms: int | None = None,
    ) -> bool:
        """Reserve (cpu, ram) for external work if it fits; registering again replaces
        (and renews) the holder's previous registration. With `ttl_ms` it lapses by
        itself unless registered again in time."""
        if not holder_id:
            raise ValueError("holder_id must not be empty")
        for name, value in (("cpu", cpu), ("ram", ram)):
            if not isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if ttl_ms is not None and ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms!r}")
        ok, cpu_now, ram_now = self._scripts.run(
            "capacity_register",
            self._external_keys,
            [
                holder_id,
                repr(float(cpu)),
                repr(float(ram)),
                kind,
                ttl_ms or 0,
                repr(self.cpu_budget),
                repr(self.ram_budget),
                self.host,
            ],
        )
        log_event(
            "capacity.external_registered" if ok else "capacity.external_refused",
            holder=holder_id,
            kind=kind,
            host=self.host,
            cpu=cpu,
            ram=ram,
            host_cpu_allocated=_str(cpu_now),
            host_ram_allocated=_str(ram_now),
            level="INFO" if ok else "WARNING",
        )
        return bool(ok)

    def release_external(self, holder_id: str) -> None:
        """Give back an external holder's share (idempotent)."""
        released = self._scripts.run("capacity_release", self._external_keys, [holder_id])
        if released:
            log_event("capacity.external_released", holder=holder_id)

    def reap_expired(self) -> list[str]:
        """Drop external registrations whose TTL lapsed; return their holder ids."""
        reaped = [_str(h) for h in self._scripts.run("capacity_reap", self._external_keys, [])]
        for holder in reaped:
            log_event("capacity.external_expired", holder=holder, level="WARNING")
        return reaped

    def external(self) -> dict[str, dict[str, Any]]:
        """Registered external work: holder id -> {cpu, ram, kind, since_ms, expires_at_ms}."""
        raw = self._client.hgetall(self._keys.external_usage)
        return {_str(k): json.loads(v) for k, v in raw.items()}


@dataclass(frozen=True)
class HostBudget:
    """One live worker host's registered budget."""

    host: str
    cpu: float
    ram: float


def register_host(
    client: redis.Redis, keys: Keys, host: str, cpu_budget: float, ram_budget: float, ttl_ms: int
) -> list[HostBudget]:
    """Register (renew) `host`'s budget for `ttl_ms`; returns every live host's budget."""
    if not host:
        raise ValueError("host must not be empty")
    entry = json.dumps({"cpu": float(cpu_budget), "ram": float(ram_budget), "pid": os.getpid()})
    return _hosts(client, keys, [host, entry, int(ttl_ms)])


def live_hosts(client: redis.Redis, keys: Keys) -> list[HostBudget]:
    """The budgets of the hosts whose workers renewed their registration in time."""
    return _hosts(client, keys, ["", "{}", 0])


def _hosts(client: redis.Redis, keys: Keys, args: list[Any]) -> list[HostBudget]:
    raw = ScriptSet(client).run("capacity_host", [keys.hosts, keys.host_leases], args)
    out = []
    for i in range(0, len(raw), 2):
        entry = json.loads(raw[i + 1])
        out.append(HostBudget(_str(raw[i]), float(entry["cpu"]), float(entry["ram"])))
    return sorted(out, key=lambda h: h.host)


def pool_budget(hosts: list[HostBudget], fallback: tuple[float, float]) -> tuple[float, float]:
    """Pure: the budget the allocation is fitted to: the sum of the live hosts' budgets, or
    `fallback` (the scheduler's own settings) while no host is registered."""
    if not hosts:
        return fallback
    return sum(h.cpu for h in hosts), sum(h.ram for h in hosts)


def consuming_hosts(workers: Mapping[str, Mapping[str, Any]], mode: str) -> set[str]:
    """Pure: the hosts with a registered worker thread consuming `mode`'s queue (`types`
    None = every queue) and not draining. A host that does not consume a type (or only
    drains) must never be handed its messages: they would come straight back, over and
    over."""
    hosts = set()
    for info in workers.values():
        host, types = info.get("host"), info.get("types")
        if info.get("draining"):  # stopping: it fetches nothing more
            continue
        if isinstance(host, str) and (not types or mode in types):
            hosts.add(host)
    return hosts


def room_elsewhere(
    hosts: list[HostBudget],
    usage: Mapping[str, tuple[float, float]],
    me: str,
    cost: tuple[float, float],
) -> bool:
    """Pure: True if a live host other than `me` has room for one more slot of `cost`
    (then a job refused for capacity here hands its message to that host)."""
    for h in hosts:
        if h.host == me:
            continue
        cpu, ram = usage.get(h.host, (0.0, 0.0))
        if cpu + cost[0] <= h.cpu + EPSILON and ram + cost[1] <= h.ram + EPSILON:
            return True
    return False


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
