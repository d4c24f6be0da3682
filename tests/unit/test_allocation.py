"""compute_allocation: the seed's examples, edge cases and the optional strategies, as tables."""

from __future__ import annotations

import random

import pytest

from control_plane.allocation import compute_allocation, decide_allocation, explain_allocation

pytestmark = pytest.mark.unit

M11 = {"index": 1, "acte": 1}
M00 = {"index": 0, "acte": 0}
P31 = {"index": 3, "acte": 1}
P22 = {"index": 2, "acte": 2}

SEED = [
    # (queued, pool, minimums, expected index/acte) -- DESIGN.md section 8, must hold
    ({"index": 50, "acte": 5}, 4, M11, (3, 1)),
    ({"index": 5, "acte": 50}, 4, M11, (1, 3)),
    ({}, 4, M11, (2, 2)),
    ({"index": 0, "acte": 0}, 4, M11, (2, 2)),
]

EDGES = [
    # pool of 2
    ({"index": 100, "acte": 1}, 2, M11, (1, 1)),
    ({"index": 100, "acte": 1}, 2, M00, (2, 0)),
    ({}, 2, M00, (1, 1)),
    # minimums equal to the pool
    ({"index": 0, "acte": 50}, 2, {"index": 2, "acte": 0}, (2, 0)),
    ({"index": 50, "acte": 0}, 2, {"index": 0, "acte": 2}, (0, 2)),
    ({"index": 9, "acte": 9}, 4, {"index": 3, "acte": 1}, (3, 1)),
    # empty queue, odd pool: the extra slot goes to index (documented)
    ({}, 5, M11, (3, 2)),
    ({}, 1, M00, (1, 0)),
    ({}, 1, {"index": 0, "acte": 1}, (0, 1)),
    # one type empty
    ({"index": 100, "acte": 0}, 4, M11, (3, 1)),
    ({"index": 0, "acte": 100}, 4, M11, (1, 3)),
    ({"index": 100, "acte": 0}, 4, M00, (4, 0)),
    # missing key means zero
    ({"index": 7}, 4, M11, (3, 1)),
    # exact ties go to index first; near-ties are decided exactly
    ({"index": 1, "acte": 1}, 3, M00, (2, 1)),
    ({"index": 10**12 + 1, "acte": 10**12 - 1}, 2, M00, (1, 1)),
    ({"index": 10**12 + 1, "acte": 10**12 - 1}, 3, M00, (2, 1)),
    ({"index": 10**12 - 1, "acte": 10**12 + 1}, 3, M00, (1, 2)),
    # huge counts
    ({"index": 10**12, "acte": 10**12}, 4, M11, (2, 2)),
    ({"index": 10**12, "acte": 1}, 4, M11, (3, 1)),
    ({"index": 10**18, "acte": 3 * 10**18}, 4, M00, (1, 3)),
    # large pool, proportional with largest remainder
    ({"index": 1, "acte": 2}, 10_000, M00, (3333, 6667)),
    ({"index": 1, "acte": 2}, 10, {"index": 5, "acte": 1}, (5, 5)),
]


@pytest.mark.parametrize(("queued", "pool", "mins", "expected"), SEED + EDGES)
def test_allocation_table(queued, pool, mins, expected):
    got = compute_allocation(queued, pool, mins)
    assert (got["index"], got["acte"]) == expected, f"{queued} N={pool} mins={mins}"
    assert set(got) == {"index", "acte"}


INVALID = [
    ({"index": -1}, 4, M11, {}),
    ({"index": 1, "scan": 3}, 4, M11, {}),
    ({"index": 1.5}, 4, M11, {}),
    ({"index": True}, 4, M11, {}),
    ({"index": "3"}, 4, M11, {}),
    ([("index", 3)], 4, M11, {}),
    ({}, 0, M00, {}),
    ({}, -3, M00, {}),
    ({}, 4.0, M00, {}),
    ({}, True, M00, {}),
    ({}, 4, {"index": 3, "acte": 2}, {}),
    ({}, 4, {"index": -1, "acte": 1}, {}),
    ({}, 4, {"index": 1, "other": 1}, {}),
    ({}, 4, M11, {"weights": {"index": 0}}),
    ({}, 4, M11, {"weights": {"index": float("nan")}}),
    ({}, 4, M11, {"weights": {"scan": 1.0}}),
    ({}, 4, M11, {"hysteresis": -0.5}),
    ({}, 4, M11, {"hysteresis": float("inf")}),
    ({}, 4, M11, {"previous": [2, 2], "hysteresis": 1}),
    ({}, 4, M11, {"lending": True}),
]


@pytest.mark.parametrize(("queued", "pool", "mins", "extras"), INVALID)
def test_invalid_input_raises_value_error(queued, pool, mins, extras):
    with pytest.raises(ValueError):
        compute_allocation(queued, pool, mins, **extras)


EXTRAS = [
    # weights: demand = queued x weight (e.g. seconds per document)
    ({"index": 10, "acte": 10}, M11, {}, (2, 2)),
    ({"index": 10, "acte": 10}, M11, {"weights": {"index": 1, "acte": 3}}, (1, 3)),
    ({"index": 30, "acte": 10}, M11, {"weights": {"index": 1.0, "acte": 3.0}}, (2, 2)),
    ({"index": 30, "acte": 10}, M11, {"weights": {"acte": 0.1}}, (3, 1)),
    ({}, M11, {"weights": {"index": 5, "acte": 1}}, (2, 2)),
    # hysteresis: keep the previous plan while the ideal stays near it
    ({"index": 60, "acte": 40}, M11, {"previous": P31}, (2, 2)),
    ({"index": 60, "acte": 40}, M11, {"previous": P31, "hysteresis": 0}, (2, 2)),
    ({"index": 60, "acte": 40}, M11, {"previous": P31, "hysteresis": 0.25}, (3, 1)),
    ({"index": 50, "acte": 50}, M11, {"previous": P31, "hysteresis": 0.25}, (2, 2)),
    ({"index": 50, "acte": 50}, M11, {"previous": P31, "hysteresis": 0.5}, (3, 1)),
    # previous from the published JSON (extra fields ignored)
    (
        {"index": 60, "acte": 40},
        M11,
        {"previous": {"index": 3, "acte": 1, "total": 4, "version": 9}, "hysteresis": 0.25},
        (3, 1),
    ),
    # a previous plan that no longer fits the pool or the minimums is ignored
    (
        {"index": 60, "acte": 40},
        M11,
        {"previous": {"index": 4, "acte": 1}, "hysteresis": 5},
        (2, 2),
    ),
    ({"index": 99, "acte": 1}, M11, {"previous": {"index": 4, "acte": 0}, "hysteresis": 5}, (3, 1)),
    # the minimum clamps the ideal before comparing: 100/0 ideal is 3/1 under mins 1/1
    ({"index": 100, "acte": 0}, M11, {"previous": P22, "hysteresis": 0.4}, (3, 1)),
    ({"index": 100, "acte": 0}, M11, {"previous": P22, "hysteresis": 0.5}, (2, 2)),
    # lending: an idle type lends its minimum while the other has work
    ({"index": 100, "acte": 0}, M11, {"lend_idle": True}, (4, 0)),
    ({"index": 0, "acte": 7}, M11, {"lend_idle": True}, (0, 4)),
    ({"index": 5, "acte": 50}, M11, {"lend_idle": True}, (1, 3)),
    ({"index": 0, "acte": 0}, M11, {"lend_idle": True}, (2, 2)),
    ({"index": 100, "acte": 0}, M11, {"lend_idle": False}, (3, 1)),
]


@pytest.mark.parametrize(("queued", "mins", "extras", "expected"), EXTRAS)
def test_allocation_extras_table(queued, mins, extras, expected):
    got = compute_allocation(queued, 4, mins, **extras)
    assert (got["index"], got["acte"]) == expected, f"{queued} {extras}"


def test_invariants_hold_for_random_inputs():
    rng = random.Random(20261)
    for _ in range(3000):
        pool = rng.randint(1, 40)
        mi = rng.randint(0, pool)
        ma = rng.randint(0, pool - mi)
        queued = {
            "index": rng.choice([0, rng.randint(0, 100), rng.randint(0, 10**15)]),
            "acte": rng.choice([0, rng.randint(0, 100), rng.randint(0, 10**15)]),
        }
        got = compute_allocation(queued, pool, {"index": mi, "acte": ma})
        assert got["index"] + got["acte"] == pool
        assert got["index"] >= mi and got["acte"] >= ma
        # Monotone: more index work never gives index fewer slots.
        more = compute_allocation(
            {**queued, "index": queued["index"] + 1000}, pool, {"index": mi, "acte": ma}
        )
        assert more["index"] >= got["index"]


def test_explanation_names_shares_and_minimums():
    assert explain_allocation({"index": 50, "acte": 5}, 4, M11) == (
        "queue shares 91%/9%; minimum enforced for acte"
    )
    assert explain_allocation({}, 4, M11) == "empty queue: even split"
    reason = explain_allocation({"index": 9, "acte": 0}, 4, M11, lend_idle=True)
    assert "idle acte lend their minimum" in reason
    decision = decide_allocation(
        {"index": 60, "acte": 40}, 4, M11, previous={"index": 3, "acte": 1}, hysteresis=0.25
    )
    assert decision.allocation == {"index": 3, "acte": 1}
    assert "hysteresis" in decision.reason


def test_explanation_accepts_the_computed_allocation():
    planned = compute_allocation({"index": 50, "acte": 5}, 4, M11)
    assert explain_allocation({"index": 50, "acte": 5}, 4, M11, planned) == (
        "queue shares 91%/9%; minimum enforced for acte"
    )
    assert explain_allocation({"index": 50, "acte": 5}, 4, M11, {"index": 2, "acte": 2}).endswith(
        "adjusted to 2/2"
    )
