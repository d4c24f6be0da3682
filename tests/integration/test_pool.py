"""WorkerPool on the real Redis: versioned publishing, minimal reassignment, slot leases."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import pytest
import redis

from control_plane.keys import Keys
from control_plane.pool import SlotLease, SlotRefusal, WorkerPool
from control_plane.scripts import ScriptSet

pytestmark = pytest.mark.integration

COSTS = {"index": (1.5, 0.75), "acte": (1.0, 1.0)}
CPU, RAM = 8 * 0.8, 16 * 0.8


def make_pool(client: redis.Redis, keys: Keys, **kw: object) -> WorkerPool:
    params: dict[str, object] = {
        "pool_size": 4,
        "costs": COSTS,
        "cpu_budget": CPU,
        "ram_budget": RAM,
        "slot_ttl_ms": 30_000,
    }
    params.update(kw)
    return WorkerPool(client, keys, **params)  # type: ignore[arg-type]


def taken(result: SlotLease | SlotRefusal) -> SlotLease:
    assert isinstance(result, SlotLease), f"expected a slot, got {result}"
    return result


def server_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def wait_past(client: redis.Redis, deadline_ms: int) -> None:
    """Sleep until Redis time is past `deadline_ms` (lease expiry is judged on server time)."""
    while server_ms(client) <= deadline_ms:
        time.sleep(0.02)


def mode_counts(assignments: dict[str, str]) -> dict[str, int]:
    return {m: sum(1 for v in assignments.values() if v == m) for m in COSTS}


# --- publishing ---


def test_publish_writes_allocation_json_and_assignments(redis_client, keys):
    pool = make_pool(redis_client, keys)
    assert pool.read_allocation() is None
    before = server_ms(redis_client)
    assert pool.publish_allocation(
        {"index": 3, "acte": 1},
        version=1,
        reason="queue shares 91%/9%",
        queue={"index": 50, "acte": 5},
    )
    stored = json.loads(redis_client.get(keys.allocation))
    assert {k: stored[k] for k in ("index", "acte", "total", "version", "reason")} == {
        "index": 3,
        "acte": 1,
        "total": 4,
        "version": 1,
        "reason": "queue shares 91%/9%",
    }
    assert stored["queue"] == {"index": 50, "acte": 5}
    assert before <= stored["updated_at_ms"] <= server_ms(redis_client)
    parsed = datetime.fromisoformat(stored["updated_at"].replace("Z", "+00:00"))
    assert parsed == datetime.fromtimestamp(stored["updated_at_ms"] / 1000, tz=UTC)
    assert redis_client.hgetall(keys.assignments) == {
        "ocr-worker-1": "index",
        "ocr-worker-2": "index",
        "ocr-worker-3": "index",
        "ocr-worker-4": "acte",
    }


def test_an_old_writer_cannot_overwrite_a_newer_allocation(redis_client, keys):
    pool = make_pool(redis_client, keys)
    assert pool.publish_allocation({"index": 3, "acte": 1}, version=5, reason="new")
    assert not pool.publish_allocation({"index": 1, "acte": 3}, version=4, reason="old")
    assert not pool.publish_allocation({"index": 1, "acte": 3}, version=5, reason="same")
    stored = pool.read_allocation()
    assert stored is not None and (stored["version"], stored["index"], stored["reason"]) == (
        5,
        3,
        "new",
    )
    assert mode_counts(pool.assignments()) == {"index": 3, "acte": 1}, (
        "refused publish changed slots"
    )
    assert pool.publish_allocation({"index": 1, "acte": 3}, version=6, reason="newer")
    assert mode_counts(pool.assignments()) == {"index": 1, "acte": 3}


def test_publish_rejects_bad_plans(redis_client, keys):
    pool = make_pool(redis_client, keys)
    for bad in ({"index": 5, "acte": 0}, {"index": -1, "acte": 1}, {"scan": 1}):
        with pytest.raises(ValueError):
            pool.publish_allocation(bad, version=1, reason="x")
    with pytest.raises(ValueError):
        pool.publish_allocation({"index": 2, "acte": 2}, version=1, reason="x", total=9)
    assert pool.read_allocation() is None


def test_assignments_change_minimally(redis_client, keys):
    """Each publish on an idle pool moves exactly the slots the counts require."""
    pool = make_pool(redis_client, keys, pool_size=12)
    rng = random.Random(7)
    version = 0
    previous: dict[str, str] = {}
    for _ in range(40):
        total = rng.randint(1, 12)
        index = rng.randint(0, total)
        plan = {"index": index, "acte": total - index}
        version += 1
        assert pool.publish_allocation(plan, version=version, reason="table")
        now = pool.assignments()
        assert mode_counts(now) == plan
        assert sorted(now, key=lambda s: int(s.rsplit("-", 1)[1])) == [
            f"ocr-worker-{i}" for i in range(1, total + 1)
        ]
        # Slots 1..min(old, new) that changed mode: only as many as the counts force.
        common = [s for s in now if s in previous]
        moved = sum(1 for s in common if previous[s] != now[s])
        kept_old = mode_counts({s: previous[s] for s in common})
        needed = sum(max(0, kept_old[m] - plan[m]) for m in COSTS)
        assert moved <= needed, f"{previous} -> {now}: {moved} moved, {needed} needed"
        previous = now
    # Publishing the same plan again changes nothing.
    version += 1
    assert pool.publish_allocation(mode_counts(previous), version=version, reason="same")
    assert pool.assignments() == previous


# --- slots ---


def test_take_and_release_move_capacity_atomically(redis_client, keys):
    pool = make_pool(redis_client, keys)
    pool.publish_allocation({"index": 3, "acte": 1}, version=1, reason="seed")
    leases = [taken(pool.take_slot("index", f"w{i}", f"doc-{i}")) for i in range(3)]
    assert [lease.slot_id for lease in leases] == ["ocr-worker-1", "ocr-worker-2", "ocr-worker-3"]
    assert pool.take_slot("index", "w9") == SlotRefusal("no_free_slot")
    acte = taken(pool.take_slot("acte", "w4", "doc-4"))
    # The seed's status example: 3 index + 1 acte = 5.5 vCPU, 3.25 GB.
    assert (redis_client.get(keys.cpu_allocated), redis_client.get(keys.ram_allocated)) == (
        "5.5",
        "3.25",
    )
    assert pool.busy_slots() == {"index": 3, "acte": 1}
    assert pool.free_slots() == {"index": 0, "acte": 0}
    assert pool.holders()["ocr-worker-2"]["document"] == "doc-1"
    assert "token" not in pool.holders()["ocr-worker-2"]

    assert pool.release_slot(leases[1])
    assert not pool.release_slot(leases[1]), "a second release must do nothing"
    assert redis_client.get(keys.cpu_allocated) == "4"
    forged = SlotLease(acte.slot_id, "acte", "intruder", "not-the-token", 1.0, 1.0)
    assert not pool.release_slot(forged)
    assert not pool.renew_slot(forged)
    assert pool.renew_slot(acte)
    for lease in (leases[0], leases[2], acte):
        assert pool.release_slot(lease)
    assert (redis_client.get(keys.cpu_allocated), redis_client.get(keys.ram_allocated)) == (
        "0",
        "0",
    )
    assert pool.free_slots() == {"index": 3, "acte": 1}


def test_take_refuses_when_the_budget_is_full(redis_client, keys):
    pool = make_pool(redis_client, keys, cpu_budget=4.0)
    pool.publish_allocation({"index": 4, "acte": 0}, version=1, reason="x")
    first, second = taken(pool.take_slot("index", "a")), taken(pool.take_slot("index", "b"))
    assert pool.take_slot("index", "c") == SlotRefusal("capacity")
    assert redis_client.get(keys.cpu_allocated) == "3"
    assert redis_client.hlen(keys.slot_holders) == 2
    pool.release_slot(first)
    taken(pool.take_slot("index", "c"))
    pool.release_slot(second)


def test_a_retried_take_with_the_same_token_returns_the_same_slot(redis_client, keys):
    pool = make_pool(redis_client, keys)
    pool.publish_allocation({"index": 2, "acte": 2}, version=1, reason="x")
    script_keys = pool._slot_keys
    holder = json.dumps(
        {
            "holder": "w",
            "token": "tok-1",
            "mode": "index",
            "document": "",
            "host": "h1",
            "cpu": 1.5,
            "ram": 0.75,
        }
    )
    args = ["index", "tok-1", holder, 30_000, "1.5", "0.75", repr(CPU), repr(RAM), "h1"]
    scripts = ScriptSet(redis_client)
    first = scripts.run("pool_take", script_keys, args)
    again = scripts.run("pool_take", script_keys, args)
    assert first[1] == again[1] == "ocr-worker-1"
    assert redis_client.get(keys.cpu_allocated) == "1.5", "a retry must not charge twice"


def test_busy_slot_switches_mode_only_after_its_job(redis_client, keys):
    pool = make_pool(redis_client, keys)
    pool.publish_allocation({"index": 3, "acte": 1}, version=1, reason="index heavy")
    index_leases = [taken(pool.take_slot("index", f"w{i}")) for i in range(3)]

    pool.publish_allocation({"index": 1, "acte": 3}, version=2, reason="acte heavy")
    # Busy index slots keep running index; two of them will switch when released.
    assert mode_counts(pool.assignments()) == {"index": 3, "acte": 1}
    assert pool.pending_modes() == {"ocr-worker-2": "acte", "ocr-worker-3": "acte"}
    assert pool.free_slots() == {"index": 0, "acte": 1}
    taken(pool.take_slot("acte", "a1"))
    assert pool.take_slot("acte", "a2") == SlotRefusal("no_free_slot")

    pool.release_slot(index_leases[1])  # ocr-worker-2 finishes its index job
    assert pool.assignments()["ocr-worker-2"] == "acte"
    assert pool.pending_modes() == {"ocr-worker-3": "acte"}
    assert taken(pool.take_slot("acte", "a2")).slot_id == "ocr-worker-2"
    pool.release_slot(index_leases[0])  # ocr-worker-1 stays index: nothing pending
    assert pool.assignments()["ocr-worker-1"] == "index"
    assert pool.free_slots()["index"] == 1

    # A later plan that wants index back cancels the pending switch of the busy slot.
    pool.publish_allocation({"index": 2, "acte": 2}, version=3, reason="balanced")
    assert pool.pending_modes() == {}
    assert mode_counts(pool.assignments()) == {"index": 2, "acte": 2}


def test_shrinking_the_plan_retires_busy_slots_after_their_job(redis_client, keys):
    pool = make_pool(redis_client, keys)
    pool.publish_allocation({"index": 2, "acte": 2}, version=1, reason="x")
    leases = [taken(pool.take_slot("acte", f"a{i}")) for i in range(2)]
    assert leases[1].slot_id == "ocr-worker-4"
    pool.publish_allocation({"index": 2, "acte": 1}, version=2, reason="capacity-bound")
    assert pool.assignments()["ocr-worker-4"] == "acte"
    assert pool.pending_modes() == {"ocr-worker-4": ""}
    pool.release_slot(leases[1])
    assert "ocr-worker-4" not in pool.assignments()
    assert mode_counts(pool.assignments()) == {"index": 2, "acte": 1}
    pool.release_slot(leases[0])


def test_lapsed_lease_is_reclaimed_by_take_and_by_reap(redis_client, keys):
    pool = make_pool(redis_client, keys, pool_size=2, slot_ttl_ms=300)
    pool.publish_allocation({"index": 1, "acte": 1}, version=1, reason="x")
    stale_index = taken(pool.take_slot("index", "dead-1"))
    stale_acte = taken(pool.take_slot("acte", "dead-2"))
    assert pool.take_slot("index", "live") == SlotRefusal("no_free_slot")
    wait_past(redis_client, max(stale_index.expires_at_ms, stale_acte.expires_at_ms))
    assert pool.free_slots() == {"index": 1, "acte": 1}, "lapsed holders count as free"
    assert pool.busy_slots() == {"index": 0, "acte": 0}

    fresh = taken(pool.take_slot("index", "live"))  # reclaims both lapsed slots first
    assert fresh.slot_id == stale_index.slot_id
    assert redis_client.get(keys.cpu_allocated) == "1.5", "the dead holders' capacity came back"
    assert not pool.renew_slot(stale_index), "the dead holder lost its slot"
    assert not pool.release_slot(stale_index)
    assert redis_client.get(keys.cpu_allocated) == "1.5"

    # reap_expired gives back the fresh one once it lapses too.
    wait_past(redis_client, fresh.expires_at_ms)
    assert pool.reap_expired() == ["ocr-worker-1"]
    assert pool.reap_expired() == []
    assert (redis_client.get(keys.cpu_allocated), redis_client.get(keys.ram_allocated)) == (
        "0",
        "0",
    )


def test_renewal_keeps_a_slot_past_its_first_ttl(redis_client, keys):
    pool = make_pool(redis_client, keys, slot_ttl_ms=1000)
    pool.publish_allocation({"index": 2, "acte": 2}, version=1, reason="x")
    lease = taken(pool.take_slot("index", "w"))
    for _ in range(4):
        time.sleep(0.3)
        assert pool.renew_slot(lease)
    assert pool.reap_expired() == []
    assert pool.release_slot(lease)
