"""Issue 15: the autopilot's pool-size decision (pure, table tests)."""

from __future__ import annotations

import pytest

from control_plane.autopilot import Limits, Measurements, api_usage, decide_pool_size

L = Limits(minimum=2, maximum=32, api_target=0.8)


def m(**kw: object) -> Measurements:
    base: dict[str, object] = {
        "busy": 0,
        "ready": 0,
        "rpm_used": 0,
        "tpm_used": 0,
        "rpm_limit": 100,
        "tpm_limit": 1_000_000,
        "registered_threads": 64,
    }
    base.update(kw)
    return Measurements(**base)  # type: ignore[arg-type]


CASES = [
    # (name, previous, measurements, limits, size, constraint)
    ("first decision starts small", None, m(ready=1000), L, 4, "start"),
    ("start clamped to max", None, m(), Limits(2, 3), 3, "start"),
    ("start clamped to min", None, m(), Limits(6, 10), 6, "start"),
    (
        "doubles while usage is under half the target",
        4,
        m(busy=4, ready=99, rpm_used=10),
        L,
        8,
        "growth",
    ),
    ("grows by half nearer the target", 8, m(busy=8, ready=100, rpm_used=40), L, 12, "growth"),
    ("grows at least one slot", 3, m(busy=3, ready=100, rpm_used=41), L, 4, "growth"),
    ("growth stops in the dead band", 8, m(busy=8, ready=100, rpm_used=60), L, 9, "api"),
    ("api over target shrinks at once", 10, m(busy=10, ready=100, rpm_used=95), L, 8, "api"),
    ("tokens count too", 10, m(busy=10, ready=9, tpm_used=950_000), L, 8, "api"),
    ("429 halves", 16, m(busy=16, ready=100, new_429s=3), L, 8, "429"),
    ("cooldown alone holds", 16, m(busy=16, ready=100, cooldown_ms=5000), L, 16, "cooldown"),
    ("429 with its cooldown halves", 16, m(busy=16, new_429s=1, cooldown_ms=5000), L, 8, "429"),
    ("429 never below min", 3, m(busy=3, new_429s=1), L, 2, "429"),
    (
        "host cpu over 80% shrinks",
        10,
        m(busy=10, ready=50, host_load={"h1": (1.0, 0.2)}),
        L,
        8,
        "cpu:h1",
    ),
    ("host ram binds", 10, m(busy=10, ready=50, host_load={"h1": (0.1, 0.9)}), L, 8, "ram:h1"),
    (
        "worst host binds",
        10,
        m(busy=10, ready=50, host_load={"a": (0.5, 0.1), "b": (0.95, 0.1)}),
        L,
        8,
        "cpu:b",
    ),
    (
        "waiting work grows even with idle slots",
        10,
        m(busy=6, ready=50, rpm_used=10),
        L,
        20,
        "growth",
    ),
    (
        "under target: idle slots never shrink it",
        15,
        m(busy=8, ready=99, rpm_used=70),
        L,
        15,
        "api",
    ),
    (
        "under target: the busy projection holds the size",
        16,
        m(busy=8, ready=99, rpm_used=60),
        L,
        16,
        "api",
    ),
    ("empty queue: keep", 10, m(busy=10, ready=0, rpm_used=10), L, 10, "demand"),
    ("work waits but no slot busy yet: hold", 4, m(busy=0, ready=500), L, 4, "demand"),
    (
        "settling after a shrink: no growth",
        4,
        m(busy=4, ready=99, rpm_used=10, settling=True),
        L,
        4,
        "settling",
    ),
    ("settling still shrinks", 8, m(busy=8, ready=99, rpm_used=100, settling=True), L, 6, "api"),
    ("growth limited by the work there is", 8, m(busy=8, ready=1, rpm_used=10), L, 9, "demand"),
    # API usage uses the window's average busy slots, hosts the slots busy now
    (
        "over target: cap on the window's average busy",
        10,
        m(busy=5, busy_now=10, ready=9, rpm_used=100),
        L,
        4,
        "api",
    ),
    (
        "host cap on the slots busy now",
        10,
        m(busy=5, busy_now=10, ready=50, host_load={"h": (1.0, 0.1)}),
        L,
        8,
        "cpu:h",
    ),
    # while documents wait, API usage is projected on the window's average pool size: a slot
    # idle between two jobs is the pipeline's gap, which a larger pool has too
    (
        "work waits: projection on the pool size, not the busy slots",
        9,
        m(busy=6.6, size_avg=9, ready=100, rpm_used=50),
        L,
        12,
        "api",
    ),
    (
        "work waits: over target shrinks to the pool-size projection",
        10,
        m(busy=5, size_avg=10, ready=100, rpm_used=100),
        L,
        8,
        "api",
    ),
    (
        "nothing waits: over target shrinks on the busy slots",
        10,
        m(busy=5, size_avg=10, ready=0, rpm_used=100),
        L,
        4,
        "api",
    ),
    ("threads cap", 8, m(busy=8, ready=100, registered_threads=6), L, 6, "threads"),
    ("max binds", 30, m(busy=30, ready=100, rpm_used=1), L, 32, "max"),
    ("at max stays", 32, m(busy=32, ready=100, rpm_used=1), L, 32, "max"),
    ("previous above max is clamped", 50, m(busy=20, ready=100, rpm_used=1), L, 32, "max"),
    ("loaded with nothing busy: hold", 6, m(busy=0, ready=10, rpm_used=90), L, 6, "demand"),
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("previous", "meas", "limits", "size", "constraint"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide_pool_size(
    previous: int | None, meas: Measurements, limits: Limits, size: int, constraint: str
) -> None:
    d = decide_pool_size(previous, meas, limits)
    assert (d.size, d.constraint) == (size, constraint), d


@pytest.mark.unit
def test_line_names_the_binding_constraint() -> None:
    d = decide_pool_size(12, m(busy=12, ready=100, rpm_used=78), Limits(2, 32, 0.8))
    assert d.size == 12
    assert d.line == "pool 12, limited by API usage 78% (target 80%)"


@pytest.mark.unit
def test_api_usage_is_the_larger_fraction() -> None:
    assert api_usage(m(rpm_used=10, tpm_used=500_000)) == pytest.approx(0.5)
    assert api_usage(m(rpm_used=60, tpm_used=0)) == pytest.approx(0.6)


@pytest.mark.unit
def test_bad_limits_refused() -> None:
    with pytest.raises(ValueError):
        decide_pool_size(4, m(), Limits(5, 4))


@pytest.mark.unit
def test_converges_to_the_quota_without_overshoot() -> None:
    """Closed loop on a linear model: each busy slot uses 3 RPM of a 100 RPM quota."""
    size = None
    sizes = []
    for _ in range(12):
        d = decide_pool_size(size, m(busy=size or 0, ready=1000, rpm_used=3 * (size or 0)), L)
        size = d.size
        sizes.append(size)
        assert 3 * size <= 100 * 0.8 + 3  # never beyond target by more than one slot
    assert sizes[-1] == 24  # floor(0.9 * 80 / 3): growth stops in the dead band
    assert sizes == sorted(sizes)  # grew monotonically


@pytest.mark.unit
def test_converges_with_pipeline_gaps() -> None:
    """Closed loop where a slot is busy 70% of the time while work waits (feed and delivery
    gaps) and each busy slot uses 4 RPM of a 100 RPM quota: the pool grows to the dead band
    of the target (2.8 RPM per slot: floor(72 / 2.8) = 25), not to the busy-slot projection's
    floor(0.7 * 72 / 2.8) = 18."""
    size = None
    for _ in range(15):
        s = size or 0
        d = decide_pool_size(
            size, m(busy=0.7 * s, size_avg=s, ready=1000, rpm_used=round(2.8 * s)), L
        )
        size = d.size
        assert 2.8 * size <= 80 + 2.8  # never beyond the target by more than one slot
    assert size == 25
