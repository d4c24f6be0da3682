"""Issue 15: OCR_WORKER_POOL_SIZE=auto on the live scheduler (real Redis, real PostgreSQL).

The scheduler's jobs run in-process (rebalance called directly); the published
`worker_pool:allocation` and `worker_pool:assignments` are read back from Redis, the
load comes from real slots taken and real limiter admissions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from control_plane.capacity import register_host
from control_plane.config import load_settings
from control_plane.keys import Keys
from control_plane.pool import SlotLease
from control_plane.queue.environments import Environments
from control_plane.queue.migrate import apply_schema
from control_plane.scheduler.service import Scheduler
from control_plane.slot_costs import STALE_MS, CostSampler, learned_costs

pytestmark = pytest.mark.integration

CHEAP = {"ocr_index_cpu": 0.1, "ocr_index_ram_gb": 0.1, "ocr_acte_cpu": 0.1, "ocr_acte_ram_gb": 0.1}


@pytest.fixture
def dsn(pg_database_factory) -> str:  # type: ignore[no-untyped-def]
    dsn = pg_database_factory("autopilot")
    apply_schema(dsn)
    return dsn  # type: ignore[no-any-return]


@pytest.fixture
def make_scheduler(
    dsn: str, redis_url: str, redis_client: redis.Redis, keys: Keys
) -> Iterator[Any]:
    made: list[Scheduler] = []

    def make(**env: Any) -> Scheduler:
        settings = load_settings(
            dev_database_url=dsn,
            redis_url=redis_url,
            ocr_redis_prefix=keys.prefix,
            ocr_dramatiq_namespace=keys.prefix.rstrip(":"),
            **{**CHEAP, **env},
        )
        sched = Scheduler(settings, redis_client, keys, Environments.from_settings(settings))
        made.append(sched)
        assert sched.tick_leadership(), "a lone scheduler must lead"
        return sched

    yield make
    for sched in made:
        sched.shutdown()


def seed(dsn: str, index: int, acte: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for source, count in (("index", index), ("acte", acte)):
            for n in range(count):
                conn.execute(
                    "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
                    "VALUES (%s, %s, 3)",
                    (source, f"b/{source}-{n}.pdf"),
                )


def fill(sched: Scheduler, holder: str) -> list[SlotLease]:
    """Take every free slot (as busy workers would)."""
    leases = []
    for mode, free in sched.pool.free_slots().items():
        for n in range(free):
            lease = sched.pool.take_slot(mode, f"{holder}-{mode}-{n}")
            assert isinstance(lease, SlotLease), lease
            leases.append(lease)
    return leases


def total(sched: Scheduler) -> int:
    alloc = sched.pool.read_allocation()
    assert alloc is not None
    retiring = {s for s, mode in sched.pool.pending_modes().items() if mode == ""}
    assert alloc["total"] == len(set(sched.pool.assignments()) - retiring)
    return int(alloc["total"])


def register_threads(redis_client: redis.Redis, keys: Keys, n: int) -> None:
    from control_plane.workers import WorkerRegistry

    registry = WorkerRegistry(redis_client, keys)
    for i in range(n):
        registry.heartbeat(f"w{i}", host="h", pid=i, mode=None, document=None)


def test_fixed_size_publishes_exactly_the_setting(make_scheduler: Any, dsn: str) -> None:
    seed(dsn, 30, 10)
    sched = make_scheduler(ocr_worker_pool_size=6)
    assert sched.autopilot is None
    sched.rebalance()
    alloc = sched.pool.read_allocation()
    assert alloc is not None and "autopilot" not in alloc
    assert total(sched) == 6
    assert sched.snapshot().autopilot is None


def test_auto_starts_small_grows_while_work_waits_and_shrinks_on_429(
    make_scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys
) -> None:
    seed(dsn, 60, 40)
    register_threads(redis_client, keys, 40)
    sched = make_scheduler(ocr_worker_pool_size="auto", ocr_worker_pool_max=24)
    assert total(sched) == 4  # taking the lead rebalanced: the seed's start, small
    sizes = [4]
    held: list[SlotLease] = []
    for round_ in range(4):
        held += fill(sched, f"r{round_}")
        sched.rebalance()
        sizes.append(total(sched))
    # no API usage yet: slow start (doubling) up to the maximum
    assert sizes == [4, 8, 16, 24, 24], sizes
    alloc = sched.pool.read_allocation()
    assert alloc is not None and alloc["autopilot"]["size"] == 24
    assert alloc["autopilot"]["constraint"] == "max"
    text = sched.status_text()
    assert "Autopilot: pool 24, limited by OCR_WORKER_POOL_MAX 24" in text
    registry = sched.metrics.registry
    assert registry.get_sample_value("ocr_autopilot_pool_size") == 24
    assert registry.get_sample_value("ocr_autopilot_api_target") == pytest.approx(0.8)
    assert registry.get_sample_value("ocr_autopilot_constraint", {"constraint": "max"}) == 1
    assert registry.get_sample_value("ocr_autopilot_constraint", {"constraint": "api"}) == 0

    # a 429 answer (counted by the worker in gemini:stats): halve at once
    redis_client.hincrby(keys.stats, "responses_429", 1)
    sched.rebalance()
    assert total(sched) == 12
    # busy slots beyond the new size are not interrupted: still held, retired at release
    holders = sched.pool.holders()
    assert len(holders) == 24
    assert len(sched.pool.pending_modes()) >= 12  # 12 busy slots retire at release
    assert all(not h["expired"] for h in holders.values())
    for lease in held:
        assert sched.pool.release_slot(lease)
    assert len(sched.pool.assignments()) == 12
    assert "Autopilot: pool 12, limited by 1 429(s): halved" in sched.status_text()


def test_auto_shrinks_when_api_usage_is_over_target(
    make_scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys
) -> None:
    seed(dsn, 60, 40)
    register_threads(redis_client, keys, 40)
    sched = make_scheduler(
        ocr_worker_pool_size="auto",
        ocr_worker_pool_max=20,
        gemini_rpm_limit=100,
        ocr_autopilot_api_target=30,
    )
    held = fill(sched, "a")
    sched.rebalance()
    assert total(sched) == 8
    held += fill(sched, "b")
    # 40 requests of 100 in the window: 40% > 30%. The slots that made them are the
    # window's average busy (0 at the takeover, then 4, then 8): the cap is
    # floor(average * 0.3 / 0.4), below 8 whatever the exact samples
    for _ in range(40):
        assert sched.limiter.try_acquire(10).granted
    sched.rebalance()
    assert 1 <= total(sched) < 8
    alloc = sched.pool.read_allocation()
    assert alloc is not None and alloc["autopilot"]["constraint"] == "api"
    # (40% of the window, scaled up while less than a window has been measured)
    assert re.search(r"limited by API usage \d+% \(target 30%\)", sched.status_text())
    for lease in held:
        sched.pool.release_slot(lease)


def test_new_leader_goes_on_from_the_published_size(
    make_scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys
) -> None:
    seed(dsn, 60, 40)
    register_threads(redis_client, keys, 40)
    first = make_scheduler(ocr_worker_pool_size="auto", ocr_worker_pool_max=32)
    held = fill(first, "a")
    first.rebalance()
    assert total(first) == 8
    first.shutdown()
    second = make_scheduler(ocr_worker_pool_size="auto", ocr_worker_pool_max=32)
    assert second.autopilot is not None
    # its takeover rebalance went on from the published 8 (doubled), not from the start
    assert second.autopilot.size == 16
    for lease in held:
        first.pool.release_slot(lease)


# Review attack reproductions (round 2): each failed on the code as reviewed and holds now.


def test_takeover_does_not_multiply_a_full_window_by_ten(
    make_scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """A new leader's first measure scales the limiter's window counts up to 10x ("less
    than a window measured yet") — but the counts live in Redis and already span the whole
    window of the previous leader. Pool 16 at 30% API usage (target 80%): the new leader
    reads 300% and cuts the pool to floor(16 * 0.8 / 3) = 4 on every takeover (leader
    failover, scheduler restart/deploy). The span the counts cover is now the longer of what
    the leader measured and the age of the window's oldest grant."""
    seed(dsn, 60, 40)
    register_threads(redis_client, keys, 40)
    env = {
        "ocr_worker_pool_size": "auto",
        "ocr_worker_pool_max": 32,
        "gemini_rpm_limit": 100,
        "gemini_rate_window_ms": 2_000,
    }
    first = make_scheduler(**env)
    held = fill(first, "a")
    first.rebalance()
    held += fill(first, "b")
    first.rebalance()
    assert total(first) == 16
    held += fill(first, "c")
    for _ in range(30):  # 30 requests of 100 in the window: 30%, well under the 80% target
        assert first.limiter.try_acquire(10).granted
    time.sleep(1.2)  # the window's counts now cover 1.2 s of its 2 s: at most 50%
    first.shutdown()
    second = make_scheduler(**env)
    assert second.autopilot is not None
    try:
        assert second.autopilot.size >= 16, second.autopilot.decision
    finally:
        for lease in held:
            second.pool.release_slot(lease)


def test_one_absurd_cost_sample_is_bounded_and_does_not_starve_the_fleet(
    make_scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """OCR_CAPACITY_COSTS=learned: one sample from one worker process (process_time jumped:
    a CPU-time counter reset/skew, a library spawning threads, a buggy worker) of 1000 CPU-s
    over 1 s with one busy index slot sets that host's learned index cost to ~300 vCPU: the
    EWMA has a floor but no ceiling (not even the host's own budget). fleet_costs fits every
    host to the dearest, so a fixed pool of 16 on two healthy 8-vCPU hosts loses its index
    slots; and the figure has no TTL and only moves when a slot on that host is busy,
    which capacity now refuses: it sticks."""
    seed(dsn, 30, 10)
    for host in ("h1", "h2"):
        register_host(redis_client, keys, host, 8.0, 32.0, 600_000)
    declared = {"index": (1.5, 0.75), "acte": (1.0, 1.0)}
    clock, cpu = [0.0], [0.0]
    sampler = CostSampler(
        redis_client, keys, "h1", declared,
        clock=lambda: clock[0], cpu_time=lambda: cpu[0], rss_gb=lambda: 0.1,
        ceiling=(8.0, 32.0),
    )  # fmt: skip
    sampler.sample({"index": 1})
    clock[0], cpu[0] = 1.0, 1000.0
    sampler.sample({"index": 1})
    learned = learned_costs(redis_client, keys)[("h1", "index")]
    sched = make_scheduler(
        ocr_worker_pool_size=16,
        ocr_capacity_costs="learned",
        ocr_index_cpu=1.5,
        ocr_index_ram_gb=0.75,
        ocr_acte_cpu=1.0,
        ocr_acte_ram_gb=1.0,
    )
    sched.rebalance()
    alloc = sched.pool.read_allocation()
    assert alloc is not None
    problems = []
    if learned[0] > 8.0:
        problems.append(f"learned index cost {learned[0]} vCPU > the host's 8 vCPU budget")
    if alloc["index"] < 1:
        problems.append(f"fixed pool 16 on 2x8 vCPU starved the index type: {alloc}")
    assert not problems, problems
    # a figure nobody refreshes for an hour is forgotten: the declared cost again
    field = "h1|index"
    entry = json.loads(redis_client.hget(keys.slot_costs_learned, field))  # type: ignore[arg-type]
    entry["updated_ms"] -= STALE_MS + 1_000
    redis_client.hset(keys.slot_costs_learned, field, json.dumps(entry))
    assert ("h1", "index") not in learned_costs(redis_client, keys)


def test_a_leader_that_regains_the_lease_goes_on_from_the_interim_leaders_size(
    make_scheduler: Any, dsn: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """A scheduler that lost the lease and won it back planned from its own stale decision,
    not from the size the interim leader published (and kept that leader's 429s as new)."""
    seed(dsn, 60, 40)
    register_threads(redis_client, keys, 40)
    sched = make_scheduler(ocr_worker_pool_size="auto", ocr_worker_pool_max=32)
    held = fill(sched, "a")
    sched.rebalance()
    assert sched.autopilot is not None and sched.autopilot.size == 8
    for lease in held:
        sched.pool.release_slot(lease)
    # the interim leader shrank the pool to 4 and published it
    published = json.loads(redis_client.get(keys.allocation))  # type: ignore[arg-type]
    published["autopilot"]["size"] = 4
    redis_client.set(keys.allocation, json.dumps(published))
    decision = sched.autopilot.step({"index": 60, "acte": 40})
    assert decision.size == 4, decision  # nothing busy yet: it holds the interim size
