"""Benchmark: our dual RPM+TPM limiter against dramatiq's and limits' single-limit Redis limiters.

    .venv/bin/python bench/limiter.py [--redis-url redis://127.0.0.1:6379/0] [--seconds 3]
                                      [--repeat 3]

Phase 1 (throughput, latency): limits far above demand, so every call is a grant; grants/s
and per-call p50/p99 from 1 process and from 8 processes (spawned OS processes).
Phase 2 (correctness): limits low enough to saturate, 8 processes for three windows; every
admission is recorded and every sliding window (t - W, t] ending at an admission is audited.
An over-admission is an admission that made its window exceed a limit. Baselines are audited
on the client clock (they have no other); ours on Redis time (what it enforces) and, for a
like-for-like view, on the client clock too. All keys live under a unique prefix, deleted after.

Fairness: one Redis, the same process counts and load loop for every limiter; the whole set is
run `--repeat` times, rotating which limiter goes first, and the table shows the median of each
figure (over-admissions: the total over all repetitions, so any single one shows).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import redis

from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.redis_conn import redis_client

LIMITERS = ("ours (RPM+TPM)", "dramatiq Window", "limits MovingWindow")
SAT_WINDOW_S = 2
SAT_RPM = 100
SAT_TPM = 20_000
SAT_TOKENS = (50, 100, 200, 400)  # mean 187 x 100 requests > 20 000: both limits bind


@dataclass(frozen=True)
class Job:
    limiter: str
    url: str
    prefix: str
    saturate: bool
    start_at: float
    end_at: float
    seed: int


@dataclass
class Outcome:
    calls: int = 0
    grants: int = 0
    latencies_us: list[float] = field(default_factory=list)
    client_events: list[tuple[int, int]] = field(default_factory=list)
    server_events: list[tuple[int, int]] = field(default_factory=list)


def _build(job: Job):  # type: ignore[no-untyped-def]
    """A `call(tokens) -> (granted, server_us | None)` for the limiter under test."""
    rpm, tpm, window_s = (SAT_RPM, SAT_TPM, SAT_WINDOW_S) if job.saturate else (10**9, 10**15, 60)
    if job.limiter.startswith("ours"):
        ours = GeminiRateLimiter(
            redis_client(job.url),
            rpm_limit=rpm,
            tpm_limit=tpm,
            window_ms=window_s * 1000,
            keys=Keys(prefix=job.prefix + "ours:"),
        )
        if job.saturate:  # the real path: wait on server hints, queue for fairness

            def call_ours(tokens: int) -> tuple[bool, int | None]:
                grant = ours.acquire(tokens, timeout=max(0.001, job.end_at - time.time()))
                return True, grant.granted_at_us

            return call_ours

        def try_ours(tokens: int) -> tuple[bool, int | None]:
            decision = ours.try_acquire(tokens)
            return decision.granted, decision.granted_at_us

        return try_ours
    if job.limiter.startswith("dramatiq"):
        from dramatiq.rate_limits import WindowRateLimiter
        from dramatiq.rate_limits.backends import RedisBackend

        backend = RedisBackend(client=redis.Redis.from_url(job.url))
        window = WindowRateLimiter(backend, job.prefix + "dramatiq", limit=rpm, window=window_s)

        def call_dramatiq(tokens: int) -> tuple[bool, int | None]:
            with window.acquire(raise_on_failure=False) as acquired:
                return bool(acquired), None

        return call_dramatiq
    from limits import RateLimitItemPerSecond
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    moving = MovingWindowRateLimiter(RedisStorage(job.url, key_prefix=job.prefix + "limits"))
    item = RateLimitItemPerSecond(rpm, window_s)

    def call_limits(tokens: int) -> tuple[bool, int | None]:
        return moving.hit(item, "bench"), None

    return call_limits


def run_job(job: Job) -> Outcome:
    """One process: call the limiter until `end_at`, recording latencies and admissions."""
    from control_plane.errors import AcquireTimeoutError

    call = _build(job)
    rng = random.Random(job.seed)
    out = Outcome()
    time.sleep(max(0.0, job.start_at - time.time()))
    while time.time() < job.end_at:
        tokens = rng.choice(SAT_TOKENS) if job.saturate else 1
        before = time.time()
        try:
            granted, server_us = call(tokens)
        except AcquireTimeoutError:
            break
        after = time.time()
        out.calls += 1
        out.latencies_us.append((after - before) * 1e6)
        if granted:
            out.grants += 1
            if job.saturate:
                out.client_events.append(
                    (int(after * 1e6), tokens)
                )  # ours may have waited: use the return
                if server_us:
                    out.server_events.append((server_us, tokens))
        elif job.saturate:
            time.sleep(0.001)  # baselines give no retry hint; do not melt the CPU
    return out


def run_phase(
    limiter: str, url: str, prefix: str, processes: int, seconds: float, saturate: bool
) -> Outcome:
    start = time.time() + 1.5 + 0.15 * processes  # spawned children import first
    jobs = [
        Job(limiter, url, prefix, saturate, start, start + seconds, seed)
        for seed in range(processes)
    ]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(run_job, jobs))
    total = Outcome()
    for part in parts:
        total.calls += part.calls
        total.grants += part.grants
        total.latencies_us += part.latencies_us
        total.client_events += part.client_events
        total.server_events += part.server_events
    return total


def over_admissions(events: list[tuple[int, int]], limit_req: int, limit_tok: int | None) -> int:
    """Admissions whose sliding window (t - W, t] exceeded a limit (two pointers, O(n log n))."""
    ordered = sorted(events)
    window_us = SAT_WINDOW_S * 1_000_000
    count = start = tokens = 0
    for end, (at, weight) in enumerate(ordered):
        tokens += weight
        while ordered[start][0] <= at - window_us:
            tokens -= ordered[start][1]
            start += 1
        if end - start + 1 > limit_req or (limit_tok is not None and tokens > limit_tok):
            count += 1
    return count


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")  # type: ignore[call-overload]


def measure(limiter: str, url: str, prefix: str, seconds: float) -> tuple[float, ...]:
    """One repetition for one limiter: the table's figures (over-admissions as counts)."""
    one = run_phase(limiter, url, prefix, 1, seconds, saturate=False)
    eight = run_phase(limiter, url, prefix, 8, seconds, saturate=False)
    sat = run_phase(limiter, url, prefix, 8, 3 * SAT_WINDOW_S, saturate=True)
    tpm_limit = SAT_TPM if limiter.startswith("ours") else None
    server = over_admissions(sat.server_events, SAT_RPM, tpm_limit) if sat.server_events else -1
    return (
        one.grants / seconds,
        pct(one.latencies_us, 50),
        pct(one.latencies_us, 99),
        eight.grants / seconds,
        pct(eight.latencies_us, 50),
        pct(eight.latencies_us, 99),
        sat.calls,
        sat.grants,
        over_admissions(sat.client_events, SAT_RPM, tpm_limit),
        server,
    )


def summarize(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """Median of each performance figure; over-admissions summed (-1 = not measurable)."""
    perf = tuple(statistics.median(run[i] for run in runs) for i in range(8))
    client = sum(run[8] for run in runs)
    server = -1 if runs[0][9] < 0 else sum(run[9] for run in runs)
    return (*perf, client, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    args = parser.parse_args()
    base = f"bench:{uuid.uuid4().hex[:8]}:"
    runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in LIMITERS}
    try:
        for rep in range(args.repeat):
            order = LIMITERS[rep % len(LIMITERS) :] + LIMITERS[: rep % len(LIMITERS)]
            for limiter in order:
                prefix = f"{base}{rep}:"
                runs[limiter].append(measure(limiter, args.redis_url, prefix, args.seconds))
                figures = ", ".join(f"{v:.0f}" for v in runs[limiter][-1])
                print(f"  rep {rep + 1}: {limiter}: {figures}", file=sys.stderr)
    finally:
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=f"{base}*", count=1000):
            client.delete(key)
        client.close()

    print(
        f"\nthroughput: {args.seconds:g} s runs, no limit binding; saturation: 8 processes, "
        f"{3 * SAT_WINDOW_S} s, {SAT_RPM} req / {SAT_WINDOW_S} s (+ {SAT_TPM} tokens for ours); "
        f"median of {args.repeat} interleaved repetitions, over-admissions summed over them"
    )
    header = (
        f"{'limiter':22} {'1p grants/s':>11} {'p50 µs':>7} {'p99 µs':>7} {'8p grants/s':>11} "
        f"{'p50 µs':>7} {'p99 µs':>7} {'sat calls':>9} {'grants':>7} {'over (client clk)':>17} "
        f"{'over (server clk)':>17}"
    )
    print(header)
    print("-" * len(header))
    for name in LIMITERS:
        r = summarize(runs[name])
        server = "-" if r[9] < 0 else f"{r[9]:.0f}"
        print(
            f"{name:22} {r[0]:11.0f} {r[1]:7.0f} {r[2]:7.0f} {r[3]:11.0f} {r[4]:7.0f} {r[5]:7.0f} "
            f"{r[6]:9.0f} {r[7]:7.0f} {r[8]:17.0f} {server:>17}"
        )


if __name__ == "__main__":
    main()
