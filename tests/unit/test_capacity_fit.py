"""fit_allocation: shrinking a plan to the host's CPU/RAM budget, as tables."""

from __future__ import annotations

import itertools

import pytest

from control_plane.capacity import fit_allocation, fits, format_amount, plan_cost

pytestmark = pytest.mark.unit

# The seed's default costs: index 1.5 vCPU / 0.75 GB, acte 1.0 vCPU / 1.0 GB.
COSTS = {"index": (1.5, 0.75), "acte": (1.0, 1.0)}
M11 = {"index": 1, "acte": 1}
CPU = 8 * (1 - 20 / 100)  # 6.4000000000000004 in floating point
RAM = 16 * (1 - 20 / 100)

FIT = [
    # (plan, cpu budget, ram budget, minimums, expected, capacity_bound)
    ((3, 1), CPU, RAM, M11, (3, 1), False),  # the seed's status example: 5.5 vCPU, 3.25 GB
    ((4, 0), CPU, RAM, M11, (4, 0), False),  # 6.0 vCPU
    ((0, 6), CPU, RAM, M11, (0, 6), False),
    ((4, 4), CPU, RAM, M11, (2, 3), True),  # 10 vCPU planned; 2x1.5 + 3x1.0 = 6.0
    ((8, 0), CPU, RAM, M11, (4, 0), True),
    ((1, 7), CPU, RAM, M11, (1, 4), True),  # 1.5 + 4.0 = 5.5; one more acte = 6.5
    ((0, 7), CPU, RAM, M11, (0, 6), True),  # 6.0 fits, 7.0 does not
    # exact fit through floating error: 4 x 1.6 = 6.4 against 6.4000000000000004
    ((4, 0), 6.4, 100.0, {}, (4, 0), False),
    # RAM binds: minimums kept, the excess taken from the type above its minimum
    ((3, 1), CPU, 2.0, M11, (1, 1), True),  # 0.75 + 1.0 = 1.75
    ((1, 3), 100.0, 2.5, M11, (1, 1), True),  # 0.75 + 1.0; a second acte makes 2.75
    ((1, 3), 100.0, 2.8, M11, (1, 2), True),  # 2.75
    # budget too small even for the minimums: keep what fits
    ((3, 1), 2.0, RAM, M11, (1, 0), True),
    ((3, 1), 1.0, RAM, M11, (0, 1), True),
    ((3, 1), 0.0, 0.0, M11, (0, 0), True),
    # without minimums the split is kept as far as possible
    ((2, 2), 4.0, RAM, {}, (1, 2), True),  # 1.5 + 2.0 = 3.5; 2 index + 1 acte = 4.0 also fits
    ((6, 2), 6.0, RAM, {}, (3, 1), True),
    # nothing to fit
    ((0, 0), 1.0, 1.0, M11, (0, 0), False),
]


@pytest.mark.parametrize(("plan", "cpu", "ram", "mins", "expected", "bound"), FIT)
def test_fit_allocation_table(plan, cpu, ram, mins, expected, bound):
    allocation = {"index": plan[0], "acte": plan[1]}
    fitted, capacity_bound = fit_allocation(allocation, COSTS, cpu, ram, mins)
    assert (fitted["index"], fitted["acte"]) == expected, f"{plan} cpu={cpu} ram={ram}"
    assert capacity_bound is bound
    assert fits(fitted, COSTS, cpu, ram)


def test_zero_cost_type_is_never_shrunk_for_the_dimension_it_does_not_use():
    costs = {"index": (1.5, 0.75), "acte": (0.0, 1.0)}
    fitted, bound = fit_allocation({"index": 3, "acte": 5}, costs, 3.0, 100.0, {})
    assert fitted == {"index": 2, "acte": 5} and bound


def test_fitted_plan_is_maximal_and_within_the_plan():
    """No slot removed by the fit could be added back without breaking the budget."""
    for i, a, cpu, ram in itertools.product(
        range(7), range(7), (0.0, 2.0, 4.5, 6.4), (1.0, 3.3, 12.8)
    ):
        plan = {"index": i, "acte": a}
        fitted, bound = fit_allocation(plan, COSTS, cpu, ram, M11)
        assert fits(fitted, COSTS, cpu, ram)
        assert all(0 <= fitted[t] <= plan[t] for t in plan)
        assert bound == (fitted != plan)
        for t in plan:
            if fitted[t] < plan[t]:
                assert not fits({**fitted, t: fitted[t] + 1}, COSTS, cpu, ram), (plan, cpu, ram, t)


@pytest.mark.parametrize(
    ("allocation", "costs", "cpu", "ram", "mins"),
    [
        ({"index": -1}, COSTS, 1.0, 1.0, {}),
        ({"index": 1.0}, COSTS, 1.0, 1.0, {}),
        ({"scan": 1}, COSTS, 1.0, 1.0, {}),
        ({"index": 1}, {"index": (-1.0, 0.0)}, 1.0, 1.0, {}),
        ({"index": 1}, COSTS, -1.0, 1.0, {}),
        ({"index": 1}, COSTS, 1.0, float("nan"), {}),
        ({"index": 1}, COSTS, 1.0, 1.0, {"index": -2}),
    ],
)
def test_fit_allocation_rejects_invalid_input(allocation, costs, cpu, ram, mins):
    with pytest.raises(ValueError):
        fit_allocation(allocation, costs, cpu, ram, mins)


def test_plan_cost_and_stored_format():
    assert plan_cost({"index": 3, "acte": 1}, COSTS) == (5.5, 3.25)
    assert format_amount(5.5) == "5.5"
    assert format_amount(0.1 + 0.2) == "0.3"
    assert format_amount(-1e-12) == "0"
    assert format_amount(3.0) == "3"
