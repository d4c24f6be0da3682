"""Autopilot (issue 15): the pool size from what the pool measures (pure decision).

`OCR_WORKER_POOL_SIZE=auto` lets the scheduler choose the pool size at each
rebalance, between a minimum and `OCR_WORKER_POOL_MAX`, aiming at the seed's
targets: API usage (requests and tokens of the current window against the
limits) at most `OCR_AUTOPILOT_API_TARGET`, each host's CPU/RAM at most 80% of
its budget, no idle slot while documents wait.

The rule, applied to one set of measurements (`Measurements`):

- start small: the first decision is `START_SIZE` (the seed's 2-4), clamped;
- a 429 since the last decision: shrink at once (halve), once per 429 seen (a cooldown
  that outlasts a rebalance, or one without a 429 such as a limiter restart, holds the
  size: nobody makes requests during it, so nothing is measured);
- each measured load gives a cap, the size at which it would reach its target:
  a host's CPU and RAM are the costs of the slots busy on it now, so its cap is
  `busy now * target / load`; API usage counts the whole window, so its cap is
  `slots * target / usage`, the slots that made it counted over the same window:
  for a type whose documents wait, its average slots (a slot idle between two jobs
  while work waits is the pipeline's gap, feed and delivery, which a larger pool has
  in the same proportion: projecting on busy slots alone under-grows by that share),
  for a type with nothing waiting its average busy slots (an idle slot there makes
  no request and never will); a load above its target shrinks the pool to
  its cap at once (slots retire after their current job: nothing is
  interrupted); API usage under its target never shrinks it, and growth stops
  where it would reach 90% of the target (a dead band against per-window noise);
- more slots than registered worker threads or than the work there is
  (busy + ready) are useless: both cap the size too;
- below every cap the pool grows gradually, only while documents wait and its
  slots work (nothing is measured before), and not within a window of a shrink
  (that window still counts throttled slots): doubling
  while API usage is under half its target (slow start), by half above that.

The binding constraint (the smallest cap, or the growth step) is named, with
its measured value, for the status line, the log and the metrics. A measurement
that is not a finite number (a host budget of almost nothing) counts as a full
load: it holds the size, never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from math import floor, isfinite

START_SIZE = 4
HOST_TARGET = 0.8  # CPU and RAM at most 80% of each host's budget (the seed's target)
GROWTH = 0.5  # grow by half the pool (at least one slot) per rebalance ...
FAST_GROWTH = 1.0  # ... or double it while API usage is under half its target
# Growth stops where the projected API usage reaches this share of the target (shrinking
# starts above the target itself): a dead band, so per-window noise (a heavy latency tail)
# does not push the pool over the target and back at every rebalance.
GROW_MARGIN = 0.9


@dataclass(frozen=True)
class Measurements:
    """What the scheduler measured at this rebalance."""

    busy: float = 0  # slots held: the average over the limiter's window (see autopilot_runtime)
    busy_now: float | None = None  # slots held right now (host loads are instantaneous)
    # slots that could work over the same window: the average slots of the types whose
    # documents wait plus the average busy slots of the others (autopilot_runtime)
    size_avg: float | None = None
    ready: int = 0  # documents waiting (all types)
    rpm_used: int = 0
    tpm_used: int = 0
    rpm_limit: int = 1
    tpm_limit: int = 1
    new_429s: int = 0  # 429 responses since the previous decision
    cooldown_ms: int = 0
    # host -> (cpu fraction of its budget, ram fraction of its budget)
    host_load: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    registered_threads: int = 0
    # shrunk less than a window ago: the window still holds throttled slots (busy, waiting
    # on the limiter, making no request), so it would under-count a slot's usage: no growth
    settling: bool = False


@dataclass(frozen=True)
class Limits:
    minimum: int
    maximum: int
    api_target: float = 0.8
    host_target: float = HOST_TARGET
    start: int = START_SIZE


@dataclass(frozen=True)
class Decision:
    size: int
    constraint: str  # stable name: start, 429, api, cpu:<host>, ram:<host>, threads, ...
    detail: str  # human: "API usage 78% (target 80%)"
    api_usage: float

    @property
    def line(self) -> str:
        """`pool 12, limited by API usage 78% (target 80%)`."""
        return f"pool {self.size}, limited by {self.detail}"


def api_usage(m: Measurements) -> float:
    """The larger of the request and token fractions of the current window."""
    return max(m.rpm_used / max(m.rpm_limit, 1), m.tpm_used / max(m.tpm_limit, 1))


def _pct(x: float) -> str:
    return f"{round(100 * x)}%" if isfinite(x) else "unknown"


def _load(x: float) -> float:
    """A load as a fraction; anything not a finite non-negative number counts as full."""
    return x if isfinite(x) and x >= 0 else float("inf")


def decide_pool_size(previous: int | None, m: Measurements, limits: Limits) -> Decision:
    """The pool size for this rebalance and the constraint that binds it."""
    lo, hi = limits.minimum, limits.maximum
    if lo < 1 or hi < lo:
        raise ValueError(f"need 1 <= minimum <= maximum, got {lo}..{hi}")
    usage = api_usage(m)

    def clamp(n: int) -> int:
        return max(lo, min(hi, n))

    if previous is None:
        return Decision(clamp(limits.start), "start", f"start (the seed's {limits.start})", usage)
    current = clamp(previous)

    if m.new_429s > 0:
        return Decision(clamp(current // 2), "429", f"{m.new_429s} 429(s): halved", usage)
    if m.cooldown_ms > 0:
        return Decision(current, "cooldown", f"a cooldown ({m.cooldown_ms} ms): held", usage)

    # caps: (size, constraint, detail); the smallest binds
    caps: list[tuple[int, str, str]] = [(hi, "max", f"OCR_WORKER_POOL_MAX {hi}")]
    busy = max(m.busy, 0)
    loads = [("api", "API usage", usage, limits.api_target)]
    for host in sorted(m.host_load):
        cpu, ram = (_load(x) for x in m.host_load[host])
        loads.append((f"cpu:{host}", f"CPU on {host}", cpu, limits.host_target))
        loads.append((f"ram:{host}", f"RAM on {host}", ram, limits.host_target))
    now = busy if m.busy_now is None else max(m.busy_now, 0)
    for name, label, load, target in loads:
        if load <= 0:
            continue
        detail = f"{label} {_pct(load)} (target {_pct(target)})"
        # API usage spans the window: the window's busy slots made it; a host's load is
        # the cost of the slots busy on it now
        held = now
        if name == "api":
            held = busy if m.ready <= 0 or not m.size_avg else max(busy, m.size_avg)
        if not isfinite(load):
            caps.append((current, name, detail))  # unknown or full: hold, never grow
        elif held > 0:
            limit = floor(held * target / load)
            if name == "api" and load <= target:  # under target: grow within the dead band,
                limit = max(floor(held * target * GROW_MARGIN / load), current)  # never shrink
            caps.append((limit, name, detail))
        elif load > target:  # loaded with no busy slot (other work): no room to grow
            caps.append((current, name, detail))
    if m.registered_threads > 0:
        caps.append((m.registered_threads, "threads", f"{m.registered_threads} worker threads"))
    cap, name, detail = min(caps, key=lambda c: c[0])

    if cap < current:
        # over a target (or more slots than threads): shrink at once to the cap
        return Decision(clamp(cap), name, detail, usage)
    work = busy + max(m.ready, 0)
    if m.ready <= 0:
        # nothing waits: no reason to grow (an idle slot costs nothing; keep the size)
        return Decision(current, "demand", "no documents waiting", usage)
    if m.settling:
        return Decision(current, "settling", f"settling after a shrink ({detail})", usage)
    if busy <= 0 and not m.busy_now:
        # documents wait but no slot has worked yet (workers starting): nothing measured
        return Decision(current, "demand", "no slot busy yet", usage)
    factor = FAST_GROWTH if usage < limits.api_target / 2 else GROWTH
    grown = min(cap, current + max(1, floor(current * factor)), max(floor(work), current))
    if grown == current:
        return Decision(current, name, detail, usage)
    if grown == floor(work) and work < cap:
        return Decision(clamp(grown), "demand", f"{floor(work)} documents in work", usage)
    if grown == cap:
        return Decision(clamp(grown), name, detail, usage)
    return Decision(clamp(grown), "growth", f"gradual growth (+{grown - current})", usage)
