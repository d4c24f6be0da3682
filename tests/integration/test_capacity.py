"""Capacity on the real Redis: external work registers its share only if it fits."""

from __future__ import annotations

import time

import pytest
import redis

from control_plane.capacity import Capacity
from control_plane.config import load_settings
from control_plane.keys import Keys
from control_plane.pool import SlotLease, SlotRefusal, WorkerPool

pytestmark = pytest.mark.integration

COSTS = {"index": (1.5, 0.75), "acte": (1.0, 1.0)}


def server_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def test_budget_from_settings_is_max_minus_reserve(redis_client, keys):
    settings = load_settings(require_environment=False, _env_file=None)
    capacity = Capacity.from_settings(redis_client, settings, keys)
    assert capacity.cpu_budget == pytest.approx(6.4) and capacity.ram_budget == pytest.approx(12.8)
    assert capacity.usage() == (0.0, 0.0)


def test_external_work_registers_only_if_it_fits(redis_client, keys):
    capacity = Capacity(redis_client, keys, cpu_budget=6.4, ram_budget=12.8)
    assert capacity.register_external("registre-1", 2.0, 4.0)
    assert capacity.register_external("registre-2", 4.4, 1.0)  # exactly the CPU budget
    assert redis_client.get(keys.cpu_allocated) == "6.4"
    assert not capacity.register_external("registre-3", 0.1, 0.1)
    assert set(capacity.external()) == {"registre-1", "registre-2"}
    assert capacity.external()["registre-1"]["kind"] == "registre"

    # Registering again replaces the share (and is refused as a whole if the new one does not fit).
    assert not capacity.register_external("registre-1", 2.5, 4.0)
    assert capacity.external()["registre-1"]["cpu"] == 2
    assert capacity.register_external("registre-1", 1.0, 4.0)
    assert capacity.usage() == (5.4, 5.0)

    capacity.release_external("registre-1")
    capacity.release_external("registre-1")  # idempotent
    assert capacity.usage() == (4.4, 1.0)
    capacity.release_external("registre-2")
    assert (redis_client.get(keys.cpu_allocated), redis_client.get(keys.ram_allocated)) == (
        "0",
        "0",
    )
    assert capacity.external() == {}


def test_external_work_and_pool_slots_share_one_budget(redis_client, keys):
    capacity = Capacity(redis_client, keys, cpu_budget=6.4, ram_budget=12.8)
    pool = WorkerPool(redis_client, keys, pool_size=4, costs=COSTS, cpu_budget=6.4, ram_budget=12.8)
    pool.publish_allocation({"index": 3, "acte": 1}, version=1, reason="x")
    assert capacity.register_external("registre-1", 2.0, 1.0, kind="registre")
    leases = [pool.take_slot("index", f"w{i}") for i in range(3)]
    assert isinstance(leases[0], SlotLease) and isinstance(leases[1], SlotLease)
    assert leases[2] == SlotRefusal("capacity")  # 2.0 + 3.0 + 1.5 > 6.4
    assert not capacity.register_external("registre-2", 1.5, 0.5)  # slots hold their share too
    capacity.release_external("registre-1")
    assert isinstance(pool.take_slot("index", "w3"), SlotLease)
    assert capacity.usage() == (4.5, 2.25)


def test_external_registration_with_ttl_lapses_by_itself(redis_client, keys):
    capacity = Capacity(redis_client, keys, cpu_budget=6.4, ram_budget=12.8)
    pool = WorkerPool(redis_client, keys, pool_size=4, costs=COSTS, cpu_budget=6.4, ram_budget=12.8)
    pool.publish_allocation({"index": 4, "acte": 0}, version=1, reason="x")
    assert capacity.register_external("registre-dead", 5.0, 1.0, ttl_ms=300)
    assert capacity.register_external("registre-forever", 0.5, 0.5)
    expires = capacity.external()["registre-dead"]["expires_at_ms"]
    assert pool.take_slot("index", "w") == SlotRefusal("capacity")
    while server_ms(redis_client) <= expires:
        time.sleep(0.02)
    # The next slot taker reclaims the lapsed registration's share.
    assert isinstance(pool.take_slot("index", "w"), SlotLease)
    assert set(capacity.external()) == {"registre-forever"}
    assert capacity.usage() == (2.0, 1.25)

    assert capacity.register_external("registre-short", 1.0, 1.0, ttl_ms=200)
    expires = capacity.external()["registre-short"]["expires_at_ms"]
    while server_ms(redis_client) <= expires:
        time.sleep(0.02)
    assert capacity.reap_expired() == ["registre-short"]
    assert capacity.usage() == (2.0, 1.25)


def test_bad_registrations_are_rejected(redis_client, keys):
    capacity = Capacity(redis_client, keys, cpu_budget=6.4, ram_budget=12.8)
    for args in (("", 1.0, 1.0), ("r", -1.0, 1.0), ("r", 1.0, float("inf"))):
        with pytest.raises(ValueError):
            capacity.register_external(*args)
    with pytest.raises(ValueError):
        capacity.register_external("r", 1.0, 1.0, ttl_ms=0)
    assert capacity.usage() == (0.0, 0.0)


def test_separate_prefixes_do_not_share_capacity(redis_client, keys):
    other = Keys(prefix=keys.prefix + "other:")
    a = Capacity(redis_client, keys, cpu_budget=1.0, ram_budget=1.0)
    b = Capacity(redis_client, other, cpu_budget=1.0, ram_budget=1.0)
    assert a.register_external("r", 1.0, 1.0) and b.register_external("r", 1.0, 1.0)
