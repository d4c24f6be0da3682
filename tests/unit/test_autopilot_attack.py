"""Attack on issue 15 (autopilot): pure reproductions against decide_pool_size / host_loads.

Each test states the behaviour the issue promises; each failed on the code as reviewed (its
docstring says how) and holds now.
"""

from __future__ import annotations

import math

import pytest

from control_plane.autopilot import Limits, Measurements, decide_pool_size
from control_plane.autopilot_runtime import host_loads, working_slots

L = Limits(minimum=2, maximum=64, api_target=0.8)


def m(**kw: object) -> Measurements:
    base: dict[str, object] = {
        "busy": 0,
        "ready": 0,
        "rpm_used": 0,
        "tpm_used": 0,
        "rpm_limit": 100,
        "tpm_limit": 1_000_000,
        "registered_threads": 128,
    }
    base.update(kw)
    return Measurements(**base)  # type: ignore[arg-type]


def test_one_429_halves_once_not_at_every_rebalance_its_cooldown_spans() -> None:
    """One 429 sets one cooldown (the engine's retry delay, or a whole window after a limiter
    restart). The rebalance that sees the 429 halves; the next rebalances still see the same
    cooldown in force (no new 429) and halve again and again: 32 -> 16 -> 8 -> 4 -> 2 for a
    single transient, the pool collapses to its minimum."""
    first = decide_pool_size(32, m(busy=32, ready=500, new_429s=1, cooldown_ms=60_000), L)
    assert first.size == 16
    # 30 s later (the default OCR_REBALANCE_INTERVAL_MS): same cooldown, no new 429
    second = decide_pool_size(first.size, m(busy=16, ready=500, new_429s=0, cooldown_ms=30_000), L)
    assert second.size == 16, f"halved again for the same 429: {second}"


def test_a_cooldown_with_no_429_at_all_holds_the_pool() -> None:
    """A limiter restart (state lost) sets a one-window cooldown without any 429: nothing
    was over the quota, yet every rebalance in that window halves the pool."""
    sizes = [32]
    for remaining in (60_000, 30_000, 1):
        sizes.append(
            decide_pool_size(sizes[-1], m(busy=sizes[-1], ready=500, cooldown_ms=remaining), L).size
        )
    assert sizes[-1] >= 16, f"no 429, yet the pool went {sizes}"


def test_idle_slots_of_a_type_without_work_do_not_inflate_the_api_projection() -> None:
    """Projecting API usage on the window's whole pool size whenever any document waits
    counted slots idle because *their type* has no work (the index minimum, say, while only
    acte documents wait): they make no request and never will. Pool 20: 10 busy acte slots
    use 60% of the quota (6% each), 10 index slots idle. Projected on 20 slots the cap was
    20 * 0.8 * 0.9 / 0.6 = 24; the 4 new slots go to acte -> 14 * 6% = 84% > the 80% target
    (then a shrink: oscillation). The slots that can work are counted per type now."""
    slots = working_slots(
        busy={"index": 0.0, "acte": 10.0},
        slots={"index": 10.0, "acte": 10.0},
        ready={"index": 0, "acte": 50},
    )
    assert slots == 10.0
    d = decide_pool_size(
        20, m(busy=10, busy_now=10, size_avg=slots, ready=50, rpm_used=60, rpm_limit=100), L
    )
    busy_after = 10 + (d.size - 20)  # new slots all go to the only waiting type
    assert busy_after * 0.06 <= 0.8, f"{d}: projected {busy_after * 6}% > 80%"


def test_working_slots_counts_waiting_types_whole_and_others_busy() -> None:
    assert working_slots({"index": 3.5, "acte": 1.0}, {"index": 5.0, "acte": 4.0},
                         {"index": 9, "acte": 0}) == 6.0  # fmt: skip
    # busy above the published slots (a slot retiring after a shrink) counts as it is
    assert working_slots({"index": 6.0}, {"index": 5.0}, {"index": 1}) == 6.0
    # a type with slots but no busy sample yet, while its documents wait
    assert working_slots({}, {"acte": 2.0}, {"acte": 3}) == 2.0


@pytest.mark.parametrize(
    "loads",
    [
        {"h1": (float("nan"), 0.1)},
        {"h1": (float("inf"), 0.1)},
    ],
    ids=["nan", "inf"],
)
def test_odd_host_load_does_not_crash_the_decision(loads: dict[str, tuple[float, float]]) -> None:
    """A host's load is `allocated / budget` (host_loads): a budget of a denormal
    (OCR_CPU_BUDGET=1e-310 passes gt=0) gives inf; inf/inf gives NaN. decide_pool_size then
    raises (floor(nan) ValueError, round(inf) OverflowError in the detail): rebalance
    raises, the allocation is never published."""
    d = decide_pool_size(16, m(busy=8, busy_now=8, ready=10, host_load=loads), L)
    assert 2 <= d.size <= 16


def test_host_loads_of_a_denormal_budget_is_finite() -> None:
    loads = host_loads({"h1": (1e-310, 1.0)}, {"h1": (1.0, 0.5)})
    assert all(math.isfinite(x) for x in loads["h1"]), loads
