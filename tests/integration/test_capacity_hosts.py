"""Per-host capacity on the real Redis (issue 10, point 6).

Each host takes slots within ITS budget (per-host sums checked in Lua), the totals
stay the sum of the hosts, the counters are rebuilt from the holders when they
drift, and the hosts' registered budgets add up to the budget the scheduler fits to.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from control_plane.capacity import Capacity, live_hosts, pool_budget, register_host
from control_plane.keys import Keys
from control_plane.pool import SlotLease, SlotRefusal, WorkerPool

pytestmark = pytest.mark.integration

COSTS = {"index": (1.5, 0.75), "acte": (1.0, 1.0)}
# Room for 3 acte slots per host (3 x 1.0 vCPU), not 4.
HOST_CPU, HOST_RAM = 3.2, 6.4


def host_pool(client: redis.Redis, keys: Keys, host: str, **kw: float) -> WorkerPool:
    return WorkerPool(
        client,
        keys,
        pool_size=6,
        costs=COSTS,
        cpu_budget=kw.get("cpu", HOST_CPU),
        ram_budget=kw.get("ram", HOST_RAM),
        slot_ttl_ms=int(kw.get("ttl", 30_000)),
        host=host,
    )


def by_host(client: redis.Redis, keys: Keys) -> tuple[dict[str, str], dict[str, str]]:
    return client.hgetall(keys.cpu_allocated_by_host), client.hgetall(keys.ram_allocated_by_host)


def test_each_host_fills_its_own_budget_and_totals_are_the_sum(redis_client, keys):
    a = host_pool(redis_client, keys, "host-a")
    b = host_pool(redis_client, keys, "host-b")
    a.publish_allocation({"index": 0, "acte": 6}, version=1, reason="test")
    taken_a = [a.take_slot("acte", f"a-{i}") for i in range(3)]
    assert all(isinstance(t, SlotLease) for t in taken_a)
    # Host A is full (3.0 of 3.2 vCPU): a 4th acte there is refused for capacity...
    assert a.take_slot("acte", "a-3") == SlotRefusal("capacity")
    # ...while host B, idle, still takes its own three (the bug: a global sum refused it).
    taken_b = [b.take_slot("acte", f"b-{i}") for i in range(3)]
    assert all(isinstance(t, SlotLease) for t in taken_b), taken_b
    assert redis_client.get(keys.cpu_allocated) == "6"
    assert redis_client.get(keys.ram_allocated) == "6"
    cpu, ram = by_host(redis_client, keys)
    assert cpu == {"host-a": "3", "host-b": "3"} and ram == {"host-a": "3", "host-b": "3"}
    assert a.usage_by_host() == {"host-a": (3.0, 3.0), "host-b": (3.0, 3.0)}

    # Releasing on A frees A's budget only, and the totals follow.
    assert isinstance(taken_a[0], SlotLease)
    assert a.release_slot(taken_a[0])
    assert redis_client.get(keys.cpu_allocated) == "5"
    assert by_host(redis_client, keys)[0] == {"host-a": "2", "host-b": "3"}
    assert b.take_slot("acte", "b-3") == SlotRefusal("capacity")  # the free slot: not B's room
    assert isinstance(a.take_slot("acte", "a-4"), SlotLease)


def test_concurrent_takers_never_exceed_a_hosts_budget(redis_url, keys):
    """Many threads on two hosts race for 12 slots; no host ever goes over its budget."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pools = {
        h: WorkerPool(
            client,
            keys,
            pool_size=12,
            costs=COSTS,
            cpu_budget=HOST_CPU,
            ram_budget=HOST_RAM,
            host=h,
        )
        for h in ("h1", "h2")
    }
    pools["h1"].publish_allocation({"index": 0, "acte": 12}, version=1, reason="test")
    taken: list[tuple[str, SlotLease]] = []
    lock = threading.Lock()

    def grab(host: str, n: int) -> None:
        for i in range(n):
            t = pools[host].take_slot("acte", f"{host}-{threading.get_ident()}-{i}")
            if isinstance(t, SlotLease):
                with lock:
                    taken.append((host, t))

    threads = [threading.Thread(target=grab, args=(h, 4)) for h in ("h1", "h2") for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    per_host = {h: sum(1 for host, _ in taken if host == h) for h in ("h1", "h2")}
    assert per_host == {"h1": 3, "h2": 3}, per_host
    cpu, _ = by_host(client, keys)
    assert {h: float(v) for h, v in cpu.items()} == {"h1": 3.0, "h2": 3.0}
    client.close()


def test_counters_are_rebuilt_from_the_holders_when_they_drift(redis_client, keys):
    a = host_pool(redis_client, keys, "host-a")
    a.publish_allocation({"index": 2, "acte": 2}, version=1, reason="test")
    assert isinstance(a.take_slot("index", "w1"), SlotLease)
    # Someone (a crash between two writes of an old version, an operator) corrupts them.
    redis_client.set(keys.cpu_allocated, "99")
    redis_client.set(keys.ram_allocated, "-4")
    redis_client.hset(keys.cpu_allocated_by_host, "host-a", "42")
    redis_client.hset(keys.cpu_allocated_by_host, "ghost", "7")
    assert a.reap_expired() == []  # nothing lapsed, but the sums are rebuilt
    assert redis_client.get(keys.cpu_allocated) == "1.5"
    assert redis_client.get(keys.ram_allocated) == "0.75"
    assert by_host(redis_client, keys) == ({"host-a": "1.5"}, {"host-a": "0.75"})
    # A drifted host sum cannot refuse a slot that fits: take rebuilds before it checks.
    redis_client.hset(keys.cpu_allocated_by_host, "host-a", "3.2")
    assert isinstance(a.take_slot("acte", "w2"), SlotLease)
    assert redis_client.get(keys.cpu_allocated) == "2.5"


def test_a_lapsed_holder_gives_back_its_hosts_capacity(redis_client, keys):
    a = host_pool(redis_client, keys, "host-a", ttl=1000)
    b = host_pool(redis_client, keys, "host-b", ttl=30_000)
    a.publish_allocation({"index": 0, "acte": 6}, version=1, reason="test")
    for i in range(3):
        assert isinstance(a.take_slot("acte", f"a-{i}"), SlotLease)
    assert isinstance(b.take_slot("acte", "b-0"), SlotLease)
    time.sleep(1.3)  # host A's holders stop renewing (a dead process)
    assert len(b.reap_expired()) == 3
    assert by_host(redis_client, keys)[0] == {"host-b": "1"}
    assert redis_client.get(keys.cpu_allocated) == "1"


def test_external_work_counts_on_its_own_host(redis_client, keys):
    cap_a = Capacity(redis_client, keys, cpu_budget=HOST_CPU, ram_budget=HOST_RAM, host="host-a")
    cap_b = Capacity(redis_client, keys, cpu_budget=HOST_CPU, ram_budget=HOST_RAM, host="host-b")
    a = host_pool(redis_client, keys, "host-a")
    a.publish_allocation({"index": 0, "acte": 6}, version=1, reason="test")
    assert cap_a.register_external("registre-a", 3.0, 1.0)
    assert a.take_slot("acte", "w") == SlotRefusal("capacity")  # A is full with the registre
    assert cap_b.register_external("registre-b", 3.0, 1.0)  # B is not
    assert not cap_b.register_external("registre-b2", 0.5, 0.1)
    assert by_host(redis_client, keys)[0] == {"host-a": "3", "host-b": "3"}
    assert redis_client.get(keys.cpu_allocated) == "6"
    cap_a.release_external("registre-a")
    assert isinstance(a.take_slot("acte", "w"), SlotLease)
    assert by_host(redis_client, keys)[0] == {"host-a": "1", "host-b": "3"}


def test_host_budgets_register_lapse_and_add_up(redis_client, keys):
    assert live_hosts(redis_client, keys) == []
    assert pool_budget([], (6.4, 12.8)) == (6.4, 12.8)  # no host yet: the scheduler's own
    register_host(redis_client, keys, "host-a", 3.2, 6.4, ttl_ms=30_000)
    hosts = register_host(redis_client, keys, "host-b", 4.8, 9.6, ttl_ms=800)
    assert [h.host for h in hosts] == ["host-a", "host-b"]
    assert pool_budget(hosts, (6.4, 12.8)) == pytest.approx((8.0, 16.0))
    time.sleep(1.0)  # host B's workers stopped renewing
    hosts = live_hosts(redis_client, keys)
    assert [h.host for h in hosts] == ["host-a"]
    assert pool_budget(hosts, (6.4, 12.8)) == pytest.approx((3.2, 6.4))
    assert redis_client.zrange(keys.host_leases, 0, -1) == ["host-a"]
