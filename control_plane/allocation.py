"""How many pool slots each document type gets: a pure function of the queue.

The seed's rule made exact (DESIGN.md section 8): split the pool in proportion to
the ready queue per type, round with the largest-remainder method so the total is
the pool size, then raise each type to its minimum, taking from the others.

All arithmetic is on `Fraction`s, so huge counts (10**12) and float weights give
exact, reproducible results; ties always go to the type listed first in
`DOCUMENT_TYPES` (index before acte). With an empty queue the pool is split
evenly; an odd remainder goes the same way (index first), so N=5 gives 3/2.

Optional strategies, all default-off, all pure:

- ``weights``: per-type relative cost of one document (e.g. observed seconds per
  document). Demand becomes ``queued * weight``, so 10 actes that each take 4 times
  longer than an index document weigh like 40 index documents.
- ``previous`` + ``hysteresis`` (slots, > 0): keep the previous allocation while
  every type's ideal (unrounded, minimum-clamped) share stays within
  ``0.5 + hysteresis`` slots of it, so a queue hovering around a rounding edge
  does not flap the pool at every rebalance.
- ``lend_idle``: a type with nothing queued lends its reserved minimum to the
  types that have work, until it has work again (the next rebalance gives it back).
  Only then may a type sit below its minimum, and only while its queue is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from math import isfinite

from control_plane.config import DOCUMENT_TYPES


@dataclass(frozen=True)
class AllocationDecision:
    """The allocation and a short human reason for the log and the status block."""

    allocation: dict[str, int]
    reason: str
    ideal: dict[str, Fraction]


def compute_allocation(
    queued: Mapping[str, int],
    pool_size: int,
    minimums: Mapping[str, int],
    **extras: object,
) -> dict[str, int]:
    """Slots per type: ``{"index": i, "acte": a}`` with ``i + a == pool_size``."""
    return decide_allocation(queued, pool_size, minimums, **extras).allocation


def explain_allocation(
    queued: Mapping[str, int],
    pool_size: int,
    minimums: Mapping[str, int],
    allocation: Mapping[str, int] | None = None,
    **extras: object,
) -> str:
    """Why `compute_allocation` gives what it gives (e.g. "queue shares 91%/9%").

    `allocation`, if given, is the result the caller already computed with the same
    inputs; a mismatch (the caller changed it afterwards) is said in the reason.
    """
    decision = decide_allocation(queued, pool_size, minimums, **extras)
    if allocation is not None and any(
        allocation.get(t) != decision.allocation[t] for t in DOCUMENT_TYPES
    ):
        return f"{decision.reason}; adjusted to {_fmt(allocation)}"
    return decision.reason


_EXTRAS = frozenset({"weights", "previous", "hysteresis", "lend_idle"})


def decide_allocation(
    queued: Mapping[str, int],
    pool_size: int,
    minimums: Mapping[str, int],
    **extras: object,
) -> AllocationDecision:
    """The allocation with its reason; raises ValueError on any invalid input."""
    unknown = set(extras) - _EXTRAS
    if unknown:
        raise ValueError(f"unknown allocation option(s): {', '.join(sorted(unknown))}")
    if not _is_int(pool_size) or pool_size < 1:
        raise ValueError(f"pool_size must be an integer >= 1, got {pool_size!r}")
    counts = _per_type(queued, "queued")
    mins = _per_type(minimums, "minimums")
    if sum(mins.values()) > pool_size:
        raise ValueError(f"minimums {mins} add up to more than the pool size {pool_size}")
    weights = _weights(extras.get("weights"))
    lend_idle = bool(extras.get("lend_idle", False))
    hysteresis = _hysteresis(extras.get("hysteresis", 0))
    previous = extras.get("previous")

    demand = {t: counts[t] * weights[t] for t in DOCUMENT_TYPES}
    total_demand = sum(demand.values())
    reasons: list[str] = []
    if total_demand == 0:
        # Nothing queued (or nothing seen yet): split evenly, remainder index first.
        ideal = {t: Fraction(pool_size, len(DOCUMENT_TYPES)) for t in DOCUMENT_TYPES}
        reasons.append("empty queue: even split")
    else:
        ideal = {t: pool_size * demand[t] / total_demand for t in DOCUMENT_TYPES}
        shares = "/".join(f"{round(100 * demand[t] / total_demand)}%" for t in DOCUMENT_TYPES)
        reasons.append(f"queue shares {shares}" + (" (weighted)" if extras.get("weights") else ""))

    floors = dict(mins)
    if lend_idle and total_demand > 0:
        lenders = [t for t in DOCUMENT_TYPES if counts[t] == 0 and mins[t] > 0]
        for t in lenders:
            floors[t] = 0
        if lenders:
            reasons.append(f"idle {', '.join(lenders)} lend their minimum")

    allocation = _largest_remainder(ideal, pool_size)
    raised = _raise_to_floors(allocation, floors)
    if raised:
        reasons.append(f"minimum enforced for {', '.join(raised)}")

    if previous is not None and hysteresis > 0:
        prev = _previous(previous, pool_size, floors)
        if prev is not None and prev != allocation:
            clamped = _clamp_ideal(ideal, floors, pool_size)
            tolerance = Fraction(1, 2) + hysteresis
            if all(abs(clamped[t] - prev[t]) <= tolerance for t in DOCUMENT_TYPES):
                allocation = prev
                reasons.append(f"hysteresis: kept previous {_fmt(prev)}")

    return AllocationDecision(allocation, "; ".join(reasons), ideal)


def _largest_remainder(ideal: Mapping[str, Fraction], pool_size: int) -> dict[str, int]:
    """Round exact quotas down, then hand the leftover slots to the largest remainders."""
    result = {t: int(ideal[t]) for t in DOCUMENT_TYPES}  # int() floors a non-negative Fraction
    leftover = pool_size - sum(result.values())
    # Stable sort: equal remainders keep DOCUMENT_TYPES order (index first).
    by_remainder = sorted(DOCUMENT_TYPES, key=lambda t: ideal[t] - result[t], reverse=True)
    for t in by_remainder[:leftover]:
        result[t] += 1
    return result


def _raise_to_floors(allocation: dict[str, int], floors: Mapping[str, int]) -> list[str]:
    """Raise each type to its floor, taking from the type with most slots above its own."""
    raised = []
    for t in DOCUMENT_TYPES:
        while allocation[t] < floors[t]:
            donor = max(
                (d for d in DOCUMENT_TYPES if d != t and allocation[d] > floors[d]),
                key=lambda d: allocation[d] - floors[d],
            )  # exists: the floors add up to at most the pool size
            allocation[donor] -= 1
            allocation[t] += 1
            if t not in raised:
                raised.append(t)
    return raised


def _clamp_ideal(
    ideal: Mapping[str, Fraction], floors: Mapping[str, int], pool_size: int
) -> dict[str, Fraction]:
    """The ideal shares once the floors are honoured (two types: clamp into the range)."""
    clamped = {}
    for t in DOCUMENT_TYPES:
        others = sum(floors[o] for o in DOCUMENT_TYPES if o != t)
        clamped[t] = min(max(ideal[t], Fraction(floors[t])), Fraction(pool_size - others))
    return clamped


def _per_type(values: Mapping[str, int], what: str) -> dict[str, int]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{what} must be a mapping of document type to count")
    unknown = set(values) - set(DOCUMENT_TYPES)
    if unknown:
        raise ValueError(f"{what}: unknown document type(s) {sorted(map(str, unknown))}")
    result = {}
    for t in DOCUMENT_TYPES:
        v = values.get(t, 0)
        if not _is_int(v) or v < 0:
            raise ValueError(f"{what}[{t!r}] must be a non-negative integer, got {v!r}")
        result[t] = int(v)
    return result


def _weights(raw: object) -> dict[str, Fraction]:
    if raw is None:
        return {t: Fraction(1) for t in DOCUMENT_TYPES}
    if not isinstance(raw, Mapping) or set(raw) - set(DOCUMENT_TYPES):
        raise ValueError(f"weights must map document types to positive numbers, got {raw!r}")
    weights = {}
    for t in DOCUMENT_TYPES:
        w = raw.get(t, 1)
        if isinstance(w, bool) or not isinstance(w, int | float) or not isfinite(w) or w <= 0:
            raise ValueError(f"weights[{t!r}] must be a positive finite number, got {w!r}")
        weights[t] = Fraction(w)
    return weights


def _hysteresis(raw: object) -> Fraction:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not isfinite(raw) or raw < 0:
        raise ValueError(f"hysteresis must be a non-negative number of slots, got {raw!r}")
    return Fraction(raw)


def _previous(raw: object, pool_size: int, floors: Mapping[str, int]) -> dict[str, int] | None:
    """The previous allocation if it is still a valid answer for this pool, else None."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"previous must be a mapping of document type to slots, got {raw!r}")
    checked: dict[str, int] = {}
    for t in DOCUMENT_TYPES:
        v = raw.get(t)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return None
        checked[t] = v
    # A pool resize or a raised minimum makes the old plan invalid: recompute.
    if sum(checked.values()) != pool_size or any(checked[t] < floors[t] for t in DOCUMENT_TYPES):
        return None
    return checked


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fmt(allocation: Mapping[str, int]) -> str:
    return "/".join(str(allocation[t]) for t in DOCUMENT_TYPES)
