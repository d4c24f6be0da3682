"""Pool slots under real OS processes: killed holders come back, capacity never overshoots."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from control_plane.keys import Keys
from control_plane.pool import SlotLease, WorkerPool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COSTS = {"index": (1.5, 0.75), "acte": (1.0, 1.0)}
# Tight on both dimensions: at most 4 index (6.0 vCPU) or 4 acte (4.0 GB) at once.
CPU_BUDGET, RAM_BUDGET = 6.4, 4.0
EPS = 1e-9

_POOL = """
import json, random, sys, time
import redis
from loguru import logger
logger.remove()
from control_plane.keys import Keys
from control_plane.pool import SlotLease, WorkerPool
url, prefix = sys.argv[1], sys.argv[2]
client = redis.Redis.from_url(url, decode_responses=True)
pool = WorkerPool(client, Keys(prefix), pool_size=8,
                  costs={"index": (1.5, 0.75), "acte": (1.0, 1.0)},
                  cpu_budget=float(sys.argv[3]), ram_budget=float(sys.argv[4]),
                  slot_ttl_ms=int(sys.argv[5]))
"""

HOLDER = (
    _POOL
    + """
lease = pool.take_slot(sys.argv[6], "doomed-%d" % __import__("os").getpid(), "doc")
assert isinstance(lease, SlotLease), lease
print(json.dumps({"slot": lease.slot_id, "expires": lease.expires_at_ms}), flush=True)
time.sleep(600)
"""
)

HAMMER = (
    _POOL
    + """
seconds, seed = float(sys.argv[6]), int(sys.argv[7])
rng = random.Random(seed)
stats = {"taken": 0, "no_free_slot": 0, "capacity": 0, "double_release_ignored": 0, "released": 0}
while not client.exists(prefix + "go"):
    time.sleep(0.005)
end = time.monotonic() + seconds
held = []
while time.monotonic() < end:
    if held and (len(held) >= 2 or rng.random() < 0.5):
        lease = held.pop(rng.randrange(len(held)))
        stats["released"] += pool.release_slot(lease)
        if rng.random() < 0.1 and not pool.release_slot(lease):
            stats["double_release_ignored"] += 1
    else:
        got = pool.take_slot(rng.choice(["index", "acte"]), "p%d" % seed, "doc")
        if isinstance(got, SlotLease):
            held.append(got)
            stats["taken"] += 1
        else:
            stats[got.reason] += 1
    if rng.random() < 0.2:
        time.sleep(rng.random() * 0.003)
for lease in held:
    stats["released"] += pool.release_slot(lease)
print(json.dumps(stats), flush=True)
"""
)


def spawn(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def server_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def make_pool(client: redis.Redis, keys: Keys, ttl_ms: int = 30_000) -> WorkerPool:
    return WorkerPool(
        client,
        keys,
        pool_size=8,
        costs=COSTS,
        cpu_budget=CPU_BUDGET,
        ram_budget=RAM_BUDGET,
        slot_ttl_ms=ttl_ms,
    )


@pytest.mark.parametrize("recovery", ["reap_expired", "take_slot"])
def test_slot_held_by_a_killed_process_comes_back_after_its_ttl(
    redis_client, redis_url, keys, recovery
):
    ttl_ms = 600
    pool = make_pool(redis_client, keys, ttl_ms)
    pool.publish_allocation({"index": 1, "acte": 1}, version=1, reason="x")
    procs = [
        spawn(HOLDER, redis_url, keys.prefix, CPU_BUDGET, RAM_BUDGET, ttl_ms, mode)
        for mode in ("index", "acte")
    ]
    held = []
    for proc in procs:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, f"holder failed: {proc.stderr.read() if proc.stderr else ''}"
        held.append(json.loads(line))
    assert pool.busy_slots() == {"index": 1, "acte": 1}
    assert redis_client.get(keys.cpu_allocated) == "2.5"
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)  # reaps it and closes its pipes
        assert proc.returncode == -signal.SIGKILL
    assert pool.take_slot("index", "survivor").reason == "no_free_slot"  # type: ignore[union-attr]

    deadline = max(h["expires"] for h in held)
    while server_ms(redis_client) <= deadline:
        time.sleep(0.02)
    if recovery == "reap_expired":
        assert sorted(pool.reap_expired()) == sorted(h["slot"] for h in held)
        assert (redis_client.get(keys.cpu_allocated), redis_client.get(keys.ram_allocated)) == (
            "0",
            "0",
        )
        assert pool.free_slots() == {"index": 1, "acte": 1}
    else:
        lease = pool.take_slot("index", "survivor")
        assert isinstance(lease, SlotLease) and lease.slot_id == held[0]["slot"]
        # Both dead holders' capacity was given back; only the survivor's remains.
        assert (redis_client.get(keys.cpu_allocated), redis_client.get(keys.ram_allocated)) == (
            "1.5",
            "0.75",
        )
        assert pool.holders()[lease.slot_id]["holder"] == "survivor"
        assert pool.release_slot(lease)
    assert redis_client.hlen(keys.slot_holders) == 0


def test_capacity_never_exceeds_budget_under_concurrent_slot_takers(redis_client, redis_url, keys):
    processes, seconds = 8, 3.0
    pool = make_pool(redis_client, keys)
    version = 1
    pool.publish_allocation({"index": 4, "acte": 4}, version=version, reason="start")
    procs = [
        spawn(HAMMER, redis_url, keys.prefix, CPU_BUDGET, RAM_BUDGET, 30_000, seconds, seed)
        for seed in range(processes)
    ]

    violations: list[str] = []
    samples = {"n": 0, "max_cpu": 0.0, "max_ram": 0.0}
    stop = threading.Event()

    def sample() -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        while not stop.is_set():
            pipe = client.pipeline(transaction=True)
            pipe.get(keys.cpu_allocated)
            pipe.get(keys.ram_allocated)
            pipe.hgetall(keys.slot_holders)
            pipe.hgetall(keys.assignments)
            cpu_raw, ram_raw, holders, assignments = pipe.execute()
            cpu, ram = float(cpu_raw or 0), float(ram_raw or 0)
            samples["n"] += 1
            samples["max_cpu"] = max(samples["max_cpu"], cpu)
            samples["max_ram"] = max(samples["max_ram"], ram)
            if cpu > CPU_BUDGET + EPS or ram > RAM_BUDGET + EPS:
                violations.append(f"over budget: cpu={cpu_raw} ram={ram_raw}")
            parsed = [json.loads(h) for h in holders.values()]
            if (
                abs(sum(h["cpu"] for h in parsed) - cpu) > 1e-6
                or abs(sum(h["ram"] for h in parsed) - ram) > 1e-6
            ):
                violations.append(f"sums drifted: cpu={cpu_raw} ram={ram_raw} holders={parsed}")
            for slot, h in zip(holders, parsed, strict=True):
                if assignments.get(slot) != h["mode"]:
                    violations.append(
                        f"{slot} switched mode while busy: {assignments.get(slot)} vs {h}"
                    )
        client.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    redis_client.set(keys.prefix + "go", "1")
    rng = random.Random(1)
    plan = {"index": 4, "acte": 4}
    started = time.monotonic()
    while time.monotonic() - started < seconds:  # rebalance while the takers hammer
        index = rng.randint(1, 7)
        plan = {"index": index, "acte": 8 - index}
        version += 1
        assert pool.publish_allocation(plan, version=version, reason="churn")
        time.sleep(0.05)
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    stop.set()
    sampler.join(timeout=10)

    assert not violations, violations[:5]
    assert samples["n"] > 100, f"sampler only saw {samples['n']} states"
    totals = {k: sum(o[k] for o in outputs) for k in outputs[0]}
    assert totals["taken"] == totals["released"], totals
    assert totals["capacity"] > 0, f"the budget never bound, the test proves nothing: {totals}"
    assert all(o["taken"] > 0 for o in outputs), outputs
    assert samples["max_cpu"] > CPU_BUDGET - 1.5 or samples["max_ram"] > RAM_BUDGET - 1.0, samples
    # Everything given back; pending switches applied; the last plan is in force.
    assert (redis_client.get(keys.cpu_allocated), redis_client.get(keys.ram_allocated)) == (
        "0",
        "0",
    )
    assert redis_client.hlen(keys.slot_holders) == 0
    assert pool.pending_modes() == {}
    assigned = pool.assignments()
    assert {m: sum(1 for v in assigned.values() if v == m) for m in COSTS} == plan
    print(f"\nslot hammer: {processes} processes, {totals}, {samples}")
