"""Job timing and slot wake-ups: what time-weighted allocation and a fast refill need.

- Workers record how long one document of each type holds a slot (an EWMA per type
  in `worker_pool:job_seconds`); with OCR_ALLOCATION_WEIGHTING=time the scheduler
  weighs each type's queue by it, so slow actes get a share of the pool that matches
  their work, not their count.
- A job that releases a slot pushes a token on `worker_pool:slot_freed:<type>`; a job
  waiting for a slot BLPOPs it instead of sleeping, so a look-ahead message starts the
  moment a slot frees, in whichever process or host it waits.

Lost updates of the EWMA (two workers writing at once) only drop one sample: the
figure is an estimate, not an account. The pure parts are `ewma` and `weights_from`.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import isfinite

import redis

from control_plane.config import DOCUMENT_TYPES, Settings
from control_plane.keys import Keys

# Weight of a new sample: about the last ten documents of a type count.
EWMA_ALPHA = 0.2
# Samples of each type needed before time weighting replaces the plain count.
MIN_SAMPLES = 3
# A type never weighs more than this many times another: one pathological document
# (or a run of quick failures) must not hand the whole pool to one type.
MAX_WEIGHT_RATIO = 20.0
# Tokens kept per wake-up list: more would only cause spurious wake-ups.
FREED_TOKENS_KEPT = 8
FREED_TTL_MS = 60_000


def ewma(previous: float | None, sample: float, alpha: float = EWMA_ALPHA) -> float:
    """Exponentially weighted mean; the first sample is taken as is."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if previous is None or not isfinite(previous):
        return sample
    return previous + alpha * (sample - previous)


def weights_from(raw: Mapping[str, str]) -> dict[str, float] | None:
    """Allocation weights from the job_seconds hash, or None while a type lacks samples.

    Normalised so the lightest type weighs 1, capped at MAX_WEIGHT_RATIO.
    """
    seconds: dict[str, float] = {}
    for t in DOCUMENT_TYPES:
        try:
            value = float(raw[t])
            samples = int(raw.get(f"{t}:n", "0"))
        except (KeyError, ValueError):
            return None
        if samples < MIN_SAMPLES or not isfinite(value) or value <= 0:
            return None
        seconds[t] = value
    lightest = min(seconds.values())
    return {t: min(s / lightest, MAX_WEIGHT_RATIO) for t, s in seconds.items()}


def record_job_seconds(client: redis.Redis, keys: Keys, document_type: str, seconds: float) -> None:
    """Fold one document's slot time into its type's EWMA."""
    previous = client.hget(keys.job_seconds, document_type)
    value = ewma(float(previous) if previous is not None else None, max(0.0, seconds))
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.job_seconds, document_type, repr(value))
    pipe.hincrby(keys.job_seconds, f"{document_type}:n", 1)
    pipe.execute()


def read_weights(client: redis.Redis, keys: Keys) -> dict[str, float] | None:
    """The current time weights (see `weights_from`)."""
    raw = client.hgetall(keys.job_seconds)
    return weights_from({_s(k): _s(v) for k, v in raw.items()})


def wake_slot_waiters(client: redis.Redis, keys: Keys) -> None:
    """A slot was released: wake one waiter of each type (the slot may have switched type)."""
    pipe = client.pipeline(transaction=False)
    for t in DOCUMENT_TYPES:
        name = keys.slot_freed(t)
        pipe.lpush(name, 1)
        pipe.ltrim(name, 0, FREED_TOKENS_KEPT - 1)
        pipe.pexpire(name, FREED_TTL_MS)
    pipe.execute()


def wait_slot_freed(client: redis.Redis, keys: Keys, document_type: str, timeout_s: float) -> bool:
    """Block until a slot is released (True) or `timeout_s` passes (False)."""
    return client.blpop([keys.slot_freed(document_type)], timeout=max(0.01, timeout_s)) is not None


def allocation_options(
    settings: Settings,
    weights: dict[str, float] | None,
    previous: dict[str, int] | None,
) -> dict[str, object]:
    """The beyond-the-seed options `compute_allocation` gets under these settings.

    Time weighting needs observed durations of every type (`weights`); until then the
    plain count rule applies. Hysteresis needs the previous plan.
    """
    options: dict[str, object] = {}
    if settings.ocr_allocation_weighting == "time" and weights:
        options["weights"] = weights
    if settings.ocr_allocation_lend_idle:
        options["lend_idle"] = True
    if settings.ocr_allocation_hysteresis > 0 and previous is not None:
        options["previous"] = previous
        options["hysteresis"] = settings.ocr_allocation_hysteresis
    return options


def lent_types(allocation: dict[str, int] | None, minimums: dict[str, int]) -> list[str]:
    """Types below their minimum: they lent their slots (OCR_ALLOCATION_LEND_IDLE)."""
    if not allocation:
        return []
    return [t for t in DOCUMENT_TYPES if allocation.get(t, 0) < minimums.get(t, 0)]


def lookahead_for(allocation: dict[str, int] | None, lookahead: int) -> dict[str, int]:
    """`lookahead` per type that has slots now (a type without slots gets none)."""
    if not allocation:
        return {}
    return {t: lookahead if allocation.get(t, 0) > 0 else 0 for t in DOCUMENT_TYPES}


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
