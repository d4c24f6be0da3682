"""Load generators for limiter tests: run in spawned OS processes, return what they were granted."""

from __future__ import annotations

import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from control_plane.errors import AcquireTimeoutError
from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.redis_conn import redis_client


@dataclass(frozen=True)
class LoadSpec:
    """What each hammering process does: acquire `token_choices` sizes until `end_at`."""

    url: str
    prefix: str
    rpm: int
    tpm: int
    window_ms: int
    start_at: float
    end_at: float
    token_choices: tuple[int, ...]


def hammer(spec: LoadSpec, seed: int) -> list[tuple[int, int]]:
    """Acquire until `end_at`; return (granted_at_us, tokens) for every grant."""
    client = redis_client(spec.url)
    limiter = GeminiRateLimiter(
        client,
        rpm_limit=spec.rpm,
        tpm_limit=spec.tpm,
        window_ms=spec.window_ms,
        keys=Keys(prefix=spec.prefix),
    )
    rng = random.Random(seed)
    grants: list[tuple[int, int]] = []
    time.sleep(max(0.0, spec.start_at - time.time()))
    try:
        while (remaining := spec.end_at - time.time()) > 0:
            tokens = rng.choice(spec.token_choices)
            try:
                grant = limiter.acquire(tokens, timeout=remaining)
            except AcquireTimeoutError:
                break
            grants.append((grant.granted_at_us, tokens))
    finally:
        client.close()
    return grants


def run_load(specs: list[tuple[LoadSpec, int]]) -> list[list[tuple[int, int]]]:
    """Run one `hammer` per (spec, seed) in its own spawned process; wait for all."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(specs), mp_context=context) as pool:
        futures = [pool.submit(hammer, spec, seed) for spec, seed in specs]
        return [future.result() for future in futures]
