"""Measured slot costs (issue 15, OCR_CAPACITY_COSTS=learned).

Each worker process samples its own CPU time (`time.process_time`, every thread)
and resident memory at every heartbeat and attributes them to the slots it held
busy over the interval, per type (`attribute`, pure). The samples of every
process of a host are folded into one learned cost per host and type
(`server:costs:learned`, lua/slot_costs_observe.lua): an EWMA seeded with the
declared cost (OCR_INDEX_CPU ...), never below a floor. A slot that waits on
Gemini costs next to nothing, so the learned cost falls towards the floor; a
CPU-heavy document step raises it.

With `learned`, the worker's capacity check (`pool_take`, per host) and the
scheduler's fit of the allocation use these costs; with `declared` (the default)
nothing here runs and the costs are the configured ones.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import isfinite

import redis

from control_plane.keys import Keys
from control_plane.scripts import ScriptSet

FLOOR_CPU = 0.05  # vCPU: a learned cost never goes below (a waiting slot still costs a bit)
FLOOR_RAM = 0.05  # GB
WEIGHT = 0.3  # EWMA weight of one sample
MIN_INTERVAL_S = 0.2  # shorter intervals are too noisy to attribute
# A learned figure not refreshed for this long is forgotten (the declared cost again): it only
# moves while a slot of its type is busy on its host, and a cost too high to let one be taken
# would otherwise stick.
STALE_MS = 3_600_000

Costs = dict[str, tuple[float, float]]


def attribute(
    cpu_s: float,
    wall_s: float,
    rss_gb: float,
    base_rss_gb: float,
    busy: Mapping[str, float],
    declared: Mapping[str, tuple[float, float]],
) -> Costs:
    """Pure: per busy type, the (vCPU, GB) one slot used over one interval of one process.

    `busy` is the average number of busy slots per type over the interval. The process's
    CPU (cpu_s / wall_s vCPU) and its memory above its idle baseline are shared between
    the busy types in proportion to their declared costs (by slot count when those are 0),
    then divided by each type's busy slots. No busy slot or no time: nothing to attribute.
    """
    slots = {t: float(n) for t, n in busy.items() if n > 0}
    if wall_s <= 0 or not slots:
        return {}
    vcpu = max(0.0, cpu_s) / wall_s
    extra_ram = max(0.0, rss_gb - base_rss_gb)

    def shares(index: int) -> dict[str, float]:
        weights = {t: n * declared.get(t, (0.0, 0.0))[index] for t, n in slots.items()}
        total = sum(weights.values())
        if total <= 0:
            weights, total = dict(slots), sum(slots.values())
        return {t: w / total for t, w in weights.items()}

    cpu_share, ram_share = shares(0), shares(1)
    return {t: (vcpu * cpu_share[t] / n, extra_ram * ram_share[t] / n) for t, n in slots.items()}


def smoothed(
    previous: tuple[float, float] | None,
    sample: tuple[float, float],
    seed: tuple[float, float],
    weight: float = WEIGHT,
    floor: tuple[float, float] = (FLOOR_CPU, FLOOR_RAM),
) -> tuple[float, float]:
    """Pure: the EWMA the Lua script applies (for tests and the bench): seeded, floored."""
    start = previous if previous is not None else seed
    return (
        max(floor[0], start[0] + weight * (sample[0] - start[0])),
        max(floor[1], start[1] + weight * (sample[1] - start[1])),
    )


def fleet_costs(
    learned: Mapping[tuple[str, str], tuple[float, float]],
    hosts: list[str],
    declared: Mapping[str, tuple[float, float]],
) -> Costs:
    """Pure: per type, the largest learned cost over `hosts` (declared where none learned):
    the scheduler fits the allocation to the dearest host, never to an average."""
    out: Costs = {}
    for t, cost in declared.items():
        seen = [learned[(h, t)] for h in hosts if (h, t) in learned]
        out[t] = (max(c for c, _ in seen), max(r for _, r in seen)) if seen else cost
    return out


def read_rss_gb() -> float:
    """This process's resident memory now (GB); the peak where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def learned_costs(client: redis.Redis, keys: Keys) -> dict[tuple[str, str], tuple[float, float]]:
    """(host, type) -> learned (vCPU, GB), those refreshed within STALE_MS (Redis time)."""
    raw_entries = client.hgetall(keys.slot_costs_learned)
    if not raw_entries:
        return {}
    seconds, micros = client.time()
    cutoff_ms = seconds * 1000 + micros // 1000 - STALE_MS
    out = {}
    for field, raw in raw_entries.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        host, _, kind = name.rpartition("|")
        try:
            entry = json.loads(raw)
            cost = (float(entry["cpu"]), float(entry["ram"]))
            updated = float(entry.get("updated_ms", 0))
        except (ValueError, KeyError, TypeError):
            continue  # not ours or damaged: the declared cost holds
        if updated >= cutoff_ms and all(isfinite(x) and x >= 0 for x in cost):
            out[(host, kind)] = cost
    return out


def host_costs(
    client: redis.Redis, keys: Keys, host: str, declared: Mapping[str, tuple[float, float]]
) -> Costs:
    """This host's learned cost per type (declared where none learned yet)."""
    learned = learned_costs(client, keys)
    return {t: learned.get((host, t), cost) for t, cost in declared.items()}


@dataclass
class _Mark:
    at: float
    cpu_s: float
    busy: dict[str, int]


class CostSampler:
    """One worker process's sampler: call `sample(busy)` at every heartbeat."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        host: str,
        declared: Mapping[str, tuple[float, float]],
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_time: Callable[[], float] = time.process_time,
        rss_gb: Callable[[], float] = read_rss_gb,
        weight: float = WEIGHT,
        ceiling: tuple[float, float] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = ScriptSet(client)
        self.host = host
        self.declared = {t: (float(c), float(r)) for t, (c, r) in declared.items()}
        self._clock, self._cpu_time, self._rss = clock, cpu_time, rss_gb
        self.weight = weight
        # One slot never costs more than the machine's cores, nor than its host's whole budget
        # (a skewed clock or CPU counter must not price a type off the fleet).
        cores = float(os.cpu_count() or 1)
        self.ceiling = (
            min(cores, ceiling[0]) if ceiling else cores,
            ceiling[1] if ceiling else float("inf"),
        )
        self.base_rss_gb = rss_gb()  # idle baseline: lowered whenever seen idle
        self._mark: _Mark | None = None

    def sample(self, busy: Mapping[str, int]) -> Costs:
        """Attribute the interval since the last call; fold it in; return the learned costs
        of the types sampled (empty when nothing was busy or the interval was too short)."""
        now, cpu_s, rss = self._clock(), self._cpu_time(), self._rss()
        current = {t: int(n) for t, n in busy.items()}
        mark, self._mark = self._mark, _Mark(now, cpu_s, current)
        if not any(current.values()):
            self.base_rss_gb = min(self.base_rss_gb, rss)
        if mark is None or now - mark.at < MIN_INTERVAL_S:
            if mark is not None:
                self._mark = mark  # keep accumulating from the older mark
            return {}
        average = {t: (mark.busy.get(t, 0) + current.get(t, 0)) / 2 for t in self.declared}
        samples = attribute(
            cpu_s - mark.cpu_s, now - mark.at, rss, self.base_rss_gb, average, self.declared
        )
        if not samples:
            return {}
        args: list[object] = [self.host, repr(self.weight), repr(FLOOR_CPU), repr(FLOOR_RAM)]
        for t, (c, r) in samples.items():
            if not (isfinite(c) and isfinite(r)):
                continue
            c, r = min(c, self.ceiling[0]), min(r, self.ceiling[1])
            dc, dr = self.declared[t]
            args += [t, repr(c), repr(r), repr(dc), repr(dr)]
        if len(args) == 4:
            return {}
        raw = self._scripts.run("slot_costs_observe", [self._keys.slot_costs_learned], args)
        out: Costs = {}
        for i in range(0, len(raw), 3):
            kind = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
            out[kind] = (float(raw[i + 1]), float(raw[i + 2]))
        return out
