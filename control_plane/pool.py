"""The shared worker pool: published allocation, slot assignments, slot leases.

`worker_pool:allocation` (JSON) and `worker_pool:assignments` (slot -> mode) are
written together by one versioned script, so an old scheduler cannot overwrite a
newer plan. A worker takes a slot of its document's type before processing and
releases it after; taking checks the host's CPU/RAM budget in the same script.
Every slot holder has a lease (Redis time + `slot_ttl_ms`), renewed by heartbeat:
the slot of a process that died comes back by itself once its lease lapses
(reclaimed by the next `take_slot` or by `reap_expired`), capacity included.

Slot ids are `ocr-worker-1` ... `ocr-worker-N`, N being the published total (the
pool size, or less when the CPU/RAM budget bounds the plan).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from control_plane.keys import Keys
from control_plane.logs import log_event
from control_plane.scripts import ScriptSet

if TYPE_CHECKING:
    from control_plane.config import Settings

V = TypeVar("V")

SLOT_PREFIX = "ocr-worker-"
# Fields publish_allocation writes itself; callers' extra fields may not replace them.
_RESERVED_FIELDS = frozenset(
    {"total", "version", "reason", "pool_size", "updated_at", "updated_at_ms", "leader", "epoch"}
)


@dataclass(frozen=True)
class SlotLease:
    """A held slot: pass it back to renew or release (the token fences both)."""

    slot_id: str
    mode: str
    holder: str
    token: str
    cpu: float
    ram: float
    expires_at_ms: int = 0


@dataclass(frozen=True)
class SlotRefusal:
    """No slot now: 'no_free_slot' (all slots of the mode busy) or 'capacity' (CPU/RAM budget)."""

    reason: str


class WorkerPool:
    """The pool's Redis state, behind atomic Lua operations."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        pool_size: int,
        costs: Mapping[str, tuple[float, float]],
        cpu_budget: float,
        ram_budget: float,
        slot_ttl_ms: int = 30_000,
        host: str | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        if slot_ttl_ms < 1:
            raise ValueError(f"slot_ttl_ms must be positive, got {slot_ttl_ms}")
        self._client = client
        self._keys = keys
        self._scripts = ScriptSet(client)
        self.pool_size = pool_size
        self.costs = {mode: (float(c), float(r)) for mode, (c, r) in costs.items()}
        self.modes = tuple(self.costs)
        self.cpu_budget = float(cpu_budget)
        self.ram_budget = float(ram_budget)
        self.slot_ttl_ms = slot_ttl_ms
        # The host this pool object takes slots for: its budget is the one above (issue 10).
        self.host = host if host else socket.gethostname()

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings, keys: Keys) -> WorkerPool:
        return cls(
            client,
            keys,
            pool_size=settings.ocr_worker_pool_size,
            costs=settings.slot_costs,
            cpu_budget=settings.cpu_budget,
            ram_budget=settings.ram_budget,
            slot_ttl_ms=settings.ocr_slot_ttl_ms,
            host=settings.ocr_host_name,
        )

    # --- allocation and assignments ---

    @property
    def _slot_keys(self) -> list[str]:
        """The keys every slot script touches: modes, holders, leases, pending modes, capacity
        (totals, external work, per-host sums)."""
        k = self._keys
        return [
            k.assignments,
            k.slot_holders,
            k.slot_leases,
            k.pending_modes,
            k.cpu_allocated,
            k.ram_allocated,
            k.external_usage,
            k.external_leases,
            k.cpu_allocated_by_host,
            k.ram_allocated_by_host,
        ]

    def publish_allocation(
        self,
        allocation: Mapping[str, int],
        *,
        version: int,
        reason: str,
        fence: tuple[str, int] | None = None,
        **fields: Any,
    ) -> bool:
        """Publish the plan and reassign slots to match; False if `version` is not newer.

        `fence` = (leader owner, epoch): published only while that owner holds the leader
        lock under that epoch (checked in the script); also False when it does not.
        """
        counts = self._validated(allocation)
        # Lua numbers are doubles: versions stay exact (and comparable) below 2**53.
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**53:
            raise ValueError(f"version must be an integer in [0, 2**53), got {version!r}")
        clash = _RESERVED_FIELDS.intersection(fields) | set(self.modes).intersection(fields)
        if clash:
            raise ValueError(f"fields may not replace {sorted(clash)}")
        total = sum(counts.values())
        payload = {
            **counts,
            "total": total,
            "pool_size": self.pool_size,
            "version": version,
            "reason": reason,
            **fields,
        }
        if fence is not None:
            payload["leader"], payload["epoch"] = fence
        args: list[Any] = [version, json.dumps(payload, default=str), total, SLOT_PREFIX]
        for mode in self.modes:
            args += [mode, counts[mode]]
        k = self._keys
        keys = [k.allocation, k.assignments, k.slot_holders, k.pending_modes]
        if fence is not None:
            keys += [k.leader, k.leader_epoch]
        result = self._scripts.run("pool_publish", keys, args)
        if int(result[0]) == -1:
            log_event(
                "pool.allocation_fenced",
                "not the current leader (lock owner and epoch); allocation not published",
                version=version,
                level="WARNING",
            )
            return False
        if int(result[0]) != 1:
            log_event(
                "pool.allocation_refused",
                "a newer allocation is already published",
                version=version,
                stored_version=int(result[1]),
                level="WARNING",
            )
            return False
        log_event(
            "pool.allocation_published",
            reason,
            version=version,
            slots_changed=int(result[2]),
            allocation=counts,
        )
        return True

    def read_allocation(self) -> dict[str, Any] | None:
        """The published allocation JSON, or None before the first publish."""
        raw = self._client.get(self._keys.allocation)
        return None if raw is None else dict(json.loads(raw))

    def assignments(self) -> dict[str, str]:
        """Slot id -> mode it serves now (a busy slot's pending switch is not applied yet)."""
        raw = self._client.hgetall(self._keys.assignments)
        return dict(by_slot_number((_s(k), _s(v)) for k, v in raw.items()))

    def pending_modes(self) -> dict[str, str]:
        """Busy slot id -> mode it switches to after its current job ('' = slot retired)."""
        raw = self._client.hgetall(self._keys.pending_modes)
        return {_s(k): _s(v) for k, v in raw.items()}

    # --- slots ---

    def take_slot(self, mode: str, holder: str, document: str = "") -> SlotLease | SlotRefusal:
        """Atomically take a free slot of `mode` and its CPU/RAM, or say why not."""
        cpu, ram = self._cost(mode)
        token = uuid.uuid4().hex
        holder_json = json.dumps(
            {
                "holder": holder,
                "token": token,
                "mode": mode,
                "document": document,
                "host": self.host,
                "cpu": cpu,
                "ram": ram,
            }
        )
        result = self._scripts.run(
            "pool_take",
            self._slot_keys,
            [
                mode,
                token,
                holder_json,
                self.slot_ttl_ms,
                repr(cpu),
                repr(ram),
                repr(self.cpu_budget),
                repr(self.ram_budget),
                self.host,
            ],
        )
        if int(result[0]) != 1:
            return SlotRefusal(_s(result[1]))
        return SlotLease(_s(result[1]), mode, holder, token, cpu, ram, int(result[2]))

    def renew_slot(self, lease: SlotLease) -> bool:
        """Extend the lease (heartbeat); False if the slot was reclaimed from us."""
        k = self._keys
        expires = self._scripts.run(
            "pool_renew",
            [k.slot_holders, k.slot_leases],
            [lease.slot_id, lease.token, self.slot_ttl_ms],
        )
        if not expires:
            log_event(
                "pool.slot_lost",
                "slot lease no longer ours",
                slot=lease.slot_id,
                holder=lease.holder,
                level="WARNING",
            )
        return bool(expires)

    def release_slot(self, lease: SlotLease) -> bool:
        """Give the slot and its capacity back; a second release does nothing (False)."""
        released = self._scripts.run(
            "pool_release",
            self._slot_keys,
            [lease.slot_id, lease.token],
        )
        return bool(released)

    def reap_expired(self) -> list[str]:
        """Release slots (and external registrations) whose lease lapsed; return slot ids."""
        slots, externals = self._scripts.run(
            "pool_reap",
            self._slot_keys,
            [],
        )
        reaped = [_s(s) for s in slots]
        for slot in reaped:
            log_event("pool.slot_reclaimed", "holder's lease lapsed", slot=slot, level="WARNING")
        for holder in externals:
            log_event("capacity.external_expired", holder=_s(holder), level="WARNING")
        return reaped

    # --- views (one consistent snapshot each) ---

    def free_slots(self) -> dict[str, int]:
        """Per mode: assigned slots not held (a holder whose lease lapsed counts as free)."""
        snap = self._snapshot()
        free = dict.fromkeys(self.modes, 0)
        for slot, mode in snap.assignments.items():
            if slot in snap.holders and not snap.expired(slot):
                continue
            if slot in snap.holders:  # lapsed: it comes back in its pending mode, if any
                mode = snap.pending.get(slot, mode)
                if not mode:
                    continue  # retired at release
            free[mode] = free.get(mode, 0) + 1
        return free

    def busy_slots(self) -> dict[str, int]:
        """Per mode: slots held under a live lease, by the mode their holder runs."""
        snap = self._snapshot()
        busy = dict.fromkeys(self.modes, 0)
        for slot, holder in snap.holders.items():
            if not snap.expired(slot):
                mode = str(holder.get("mode", ""))
                busy[mode] = busy.get(mode, 0) + 1
        return busy

    def holders(self) -> dict[str, dict[str, Any]]:
        """Slot id -> holder (holder, mode, document, cpu, ram, taken/expiry ms, expired)."""
        snap = self._snapshot()
        out = {}
        for slot, holder in by_slot_number(snap.holders.items()):
            info = {k: v for k, v in holder.items() if k != "token"}
            info["expires_at_ms"] = snap.leases.get(slot, 0)
            info["expired"] = snap.expired(slot)
            out[slot] = info
        return out

    def usage_by_host(self) -> dict[str, tuple[float, float]]:
        """Host -> (vCPU, GB) its busy slots and external work hold (hosts holding nothing
        are absent)."""
        k = self._keys
        pipe = self._client.pipeline(transaction=True)  # one consistent view
        pipe.hgetall(k.cpu_allocated_by_host)
        pipe.hgetall(k.ram_allocated_by_host)
        raw_cpu, raw_ram = pipe.execute()
        cpus = {_s(h): float(v) for h, v in raw_cpu.items()}
        rams = {_s(h): float(v) for h, v in raw_ram.items()}
        return {h: (cpus.get(h, 0.0), rams.get(h, 0.0)) for h in sorted(cpus.keys() | rams.keys())}

    # --- internals ---

    def _snapshot(self) -> _Snapshot:
        k = self._keys
        pipe = self._client.pipeline(transaction=True)  # MULTI/EXEC: one consistent view
        pipe.hgetall(k.assignments)
        pipe.hgetall(k.slot_holders)
        pipe.zrange(k.slot_leases, 0, -1, withscores=True)
        pipe.hgetall(k.pending_modes)
        pipe.time()
        assignments, holders, leases, pending, (sec, usec) = pipe.execute()
        return _Snapshot(
            assignments={_s(a): _s(b) for a, b in assignments.items()},
            holders={_s(a): json.loads(b) for a, b in holders.items()},
            leases={_s(a): int(score) for a, score in leases},
            pending={_s(a): _s(b) for a, b in pending.items()},
            now_ms=int(sec) * 1000 + int(usec) // 1000,
        )

    def _cost(self, mode: str) -> tuple[float, float]:
        try:
            return self.costs[mode]
        except KeyError:
            raise ValueError(f"unknown mode {mode!r}; expected one of {self.modes}") from None

    def _validated(self, allocation: Mapping[str, int]) -> dict[str, int]:
        unknown = set(allocation) - set(self.modes)
        if unknown:
            raise ValueError(f"allocation has unknown mode(s) {sorted(unknown)}")
        counts = {}
        for mode in self.modes:
            n = allocation.get(mode, 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"allocation[{mode!r}] must be a non-negative integer, got {n!r}")
            counts[mode] = n
        if sum(counts.values()) > self.pool_size:
            raise ValueError(f"allocation {counts} exceeds the pool size {self.pool_size}")
        return counts


@dataclass(frozen=True)
class _Snapshot:
    assignments: dict[str, str]
    holders: dict[str, dict[str, Any]]
    leases: dict[str, int]
    pending: dict[str, str]
    now_ms: int

    def expired(self, slot: str) -> bool:
        return self.leases.get(slot, 0) <= self.now_ms


def slot_number(slot: str) -> int:
    """The N of `ocr-worker-N` (an id of another form sorts last): the one slot order."""
    tail = slot.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 62


def by_slot_number(items: Iterable[tuple[str, V]]) -> list[tuple[str, V]]:
    """(slot id, value) pairs in slot-number order (ocr-worker-2 before ocr-worker-10)."""
    return sorted(items, key=lambda kv: (slot_number(kv[0]), kv[0]))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
