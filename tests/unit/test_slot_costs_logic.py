"""Issue 15: measured slot costs, the pure parts (attribution, smoothing, fleet view)."""

from __future__ import annotations

import pytest

from control_plane.slot_costs import FLOOR_CPU, FLOOR_RAM, attribute, fleet_costs, smoothed

DECLARED = {"index": (1.5, 0.75), "acte": (1.0, 1.0)}

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("cpu_s", "wall_s", "rss", "base", "busy", "expected"),
    [
        # one busy index slot burning one core, 0.5 GB above the baseline
        (2.0, 2.0, 1.5, 1.0, {"index": 1}, {"index": (1.0, 0.5)}),
        # two index slots share the process
        (2.0, 2.0, 1.5, 1.0, {"index": 2}, {"index": (0.5, 0.25)}),
        # waiting on Gemini: next to no CPU
        (0.01, 5.0, 1.0, 1.0, {"index": 1}, {"index": (0.002, 0.0)}),
        # mixed: CPU shared by declared CPU (1.5 vs 1.0), RAM by declared RAM (0.75 vs 1.0)
        (2.5, 1.0, 2.75, 1.0, {"index": 1, "acte": 1}, {"index": (1.5, 0.75), "acte": (1.0, 1.0)}),
        # nothing busy, or no time: nothing to attribute
        (1.0, 1.0, 2.0, 1.0, {"index": 0}, {}),
        (1.0, 0.0, 2.0, 1.0, {"index": 1}, {}),
        # RSS below the baseline counts as zero
        (1.0, 1.0, 0.5, 1.0, {"acte": 1}, {"acte": (1.0, 0.0)}),
        # average busy over the interval (1 at the start, 0 at the end -> 0.5)
        (0.5, 1.0, 1.0, 1.0, {"acte": 0.5}, {"acte": (1.0, 0.0)}),
    ],
)
def test_attribute(
    cpu_s: float,
    wall_s: float,
    rss: float,
    base: float,
    busy: dict[str, float],
    expected: dict[str, tuple[float, float]],
) -> None:
    got = attribute(cpu_s, wall_s, rss, base, busy, DECLARED)
    assert set(got) == set(expected)
    for t, (c, r) in expected.items():
        assert got[t] == pytest.approx((c, r))


def test_attribute_zero_declared_costs_share_by_count() -> None:
    got = attribute(3.0, 1.0, 1.0, 1.0, {"index": 1, "acte": 2}, {"index": (0, 0), "acte": (0, 0)})
    assert got["index"][0] == pytest.approx(1.0)
    assert got["acte"][0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("previous", "sample", "expected"),
    [
        (None, (1.0, 1.0), (1.35, 0.825)),  # seeded by the declared cost (1.5, 0.75)
        ((1.0, 1.0), (0.0, 0.0), (0.7, 0.7)),  # waiting: falls
        ((0.06, 0.06), (0.0, 0.0), (FLOOR_CPU, FLOOR_RAM)),  # never below the floor
        ((0.5, 0.5), (2.0, 0.5), (0.95, 0.5)),  # heavy step: rises
    ],
)
def test_smoothed(
    previous: tuple[float, float] | None,
    sample: tuple[float, float],
    expected: tuple[float, float],
) -> None:
    assert smoothed(previous, sample, DECLARED["index"]) == pytest.approx(expected)


def test_fleet_costs_take_the_dearest_live_host() -> None:
    learned = {("a", "index"): (0.2, 0.3), ("b", "index"): (0.9, 0.1), ("gone", "acte"): (9, 9)}
    got = fleet_costs(learned, ["a", "b"], DECLARED)
    assert got == {"index": (0.9, 0.3), "acte": (1.0, 1.0)}
