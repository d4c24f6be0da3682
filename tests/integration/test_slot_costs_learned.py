"""Issue 15: learned slot costs on real Redis with real CPU time and RSS of this process.

A CPU-heavy document step (a thread burning CPU while it holds a slot) raises the learned
cost of its type on its host, and the host then admits fewer slots (`pool_take` checks
the host's budget at the learned cost); a slot that only waits (as on Gemini) makes the
learned cost fall again, towards its floor, and the host admits more.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from control_plane.autopilot import Limits, Measurements, decide_pool_size
from control_plane.autopilot_runtime import host_loads
from control_plane.keys import Keys
from control_plane.pool import SlotLease, SlotRefusal, WorkerPool
from control_plane.slot_costs import FLOOR_CPU, CostSampler, host_costs, learned_costs

pytestmark = pytest.mark.integration

DECLARED = {"index": (0.2, 0.1), "acte": (0.2, 0.1)}
HOST = "heavy-host"
BUDGET = (2.0, 100.0)


def burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for i in range(2000):
            x += i * i


def fill_host(client: redis.Redis, keys: Keys) -> int:
    """How many index slots this host admits at its current (learned) cost."""
    pool = WorkerPool(
        client,
        keys,
        pool_size=50,
        costs=host_costs(client, keys, HOST, DECLARED),
        cpu_budget=BUDGET[0],
        ram_budget=BUDGET[1],
        host=HOST,
    )
    pool.publish_allocation({"index": 40, "acte": 0}, version=int(time.time() * 1000), reason="t")
    held = []
    while True:
        got = pool.take_slot("index", f"probe-{len(held)}")
        if isinstance(got, SlotRefusal):
            assert got.reason == "capacity", got
            break
        held.append(got)
    for lease in held:
        pool.release_slot(lease)
    return len(held)


def test_cpu_heavy_step_raises_the_cost_and_idle_waiting_lowers_it(
    redis_client: redis.Redis, keys: Keys
) -> None:
    sampler = CostSampler(redis_client, keys, HOST, DECLARED)
    declared_fit = fill_host(redis_client, keys)
    assert declared_fit == 10  # 2.0 vCPU / 0.2

    # a CPU-heavy fake document step in one busy index slot
    sampler.sample({"index": 1})
    costs = []
    for _ in range(4):
        worker = threading.Thread(target=burn, args=(0.6,))
        worker.start()
        worker.join()
        costs.append(sampler.sample({"index": 1})["index"][0])
    assert costs == sorted(costs), costs  # rises at every sample
    heavy = learned_costs(redis_client, keys)[(HOST, "index")][0]
    assert heavy > 2 * DECLARED["index"][0], heavy
    heavy_fit = fill_host(redis_client, keys)
    assert heavy_fit < declared_fit / 2, (heavy_fit, heavy)

    # the autopilot sees the host's load at the learned cost and shrinks the pool
    held_pool = WorkerPool(
        redis_client,
        keys,
        pool_size=50,
        costs=host_costs(redis_client, keys, HOST, DECLARED),
        cpu_budget=BUDGET[0],
        ram_budget=BUDGET[1],
        host=HOST,
    )
    held = [held_pool.take_slot("index", f"busy-{n}") for n in range(heavy_fit)]
    assert all(isinstance(h, SlotLease) for h in held)
    loads = host_loads({HOST: BUDGET}, held_pool.usage_by_host())
    decision = decide_pool_size(
        10,
        Measurements(busy=heavy_fit, ready=100, host_load=loads, registered_threads=50),
        Limits(1, 32),
    )
    assert decision.constraint == f"cpu:{HOST}", decision
    assert decision.size < 10
    for lease in held:
        assert isinstance(lease, SlotLease)
        held_pool.release_slot(lease)

    # slots that only wait (on Gemini): the cost falls back, towards the floor
    sampler.sample({"index": 2})
    waiting = []
    for _ in range(4):
        time.sleep(0.4)
        waiting.append(sampler.sample({"index": 2})["index"][0])
    assert waiting == sorted(waiting, reverse=True), waiting
    assert waiting[-1] < heavy / 2
    assert waiting[-1] >= FLOOR_CPU
    assert fill_host(redis_client, keys) > heavy_fit
