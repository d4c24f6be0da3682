"""Benchmark: our dual RPM+TPM limiter against dramatiq's and limits' single-limit Redis limiters.

    .venv/bin/python bench/limiter.py [--redis-url redis://127.0.0.1:6379/0] [--seconds 3]
                                      [--repeat 3]
    .venv/bin/python bench/limiter.py --scale [--processes 4] [--threads 25] [--windows 5]
                                      [--window-s 6] [--call-ms 200] [--redis-url URL]

--scale (issue 13): 100 workers (threads across a few OS processes, one limiter per process as in
the pool) share one limiter at the production rates, 10,000 requests and 40 M input tokens per
minute, on a scaled window (6 s: 1,000 requests and 4 M tokens per window). Each worker acquires
(tokens 1k-7k, mean 4k, so both limits bind), then "calls Gemini" for --call-ms, and again: the
demand is about 3x the quota. Reports utilization of the binding limit in every whole window
after the first, over-admissions (every sliding window on Redis time), Jain's fairness index
over the workers' grants, p50/p99 of one admission call as the worker sees it (after each
worker's first call, which opens its connection) and inside Redis (LATENCY HISTOGRAM), of the
whole wait, and Redis CPU (INFO cpu deltas, as a share of one core). Without --redis-url it
starts a private redis-server, so nothing else's load is counted.

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
    # each phase on its own keys: their windows differ, and the limiter keeps counting a
    # grant for the longest window a recent caller used (60 s here before the saturation)
    one = run_phase(limiter, url, prefix + "1p:", 1, seconds, saturate=False)
    eight = run_phase(limiter, url, prefix + "8p:", 8, seconds, saturate=False)
    sat = run_phase(limiter, url, prefix + "sat:", 8, 3 * SAT_WINDOW_S, saturate=True)
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


SCALE_RPM_PER_MIN = 10_000
SCALE_TPM_PER_MIN = 40_000_000
SCALE_TOKENS = (1_000, 2_000, 4_000, 6_000, 7_000)  # mean 4,000 = 40 M / 10 k: both limits bind


@dataclass(frozen=True)
class ScaleJob:
    url: str
    prefix: str
    threads: int
    rpm: int
    tpm: int
    window_ms: int
    call_s: float
    start_at: float
    end_at: float
    seed: int
    ramp_s: float = 0.0


@dataclass
class ScaleOutcome:
    grants_per_worker: list[int] = field(default_factory=list)
    events: list[tuple[int, int]] = field(default_factory=list)  # (Redis µs, tokens)
    call_us: list[float] = field(default_factory=list)  # one admission call, client side
    wait_us: list[float] = field(default_factory=list)  # one whole acquire


def run_scale_job(job: ScaleJob) -> ScaleOutcome:
    """One OS process: one limiter shared by `threads` workers until `end_at`."""
    import threading

    from control_plane.rate_limiter import AcquireCancelledError

    client = redis_client(job.url)
    limiter = GeminiRateLimiter(
        client,
        rpm_limit=job.rpm,
        tpm_limit=job.tpm,
        window_ms=job.window_ms,
        keys=Keys(prefix=job.prefix),
    )
    out = ScaleOutcome(grants_per_worker=[0] * job.threads)
    lock = threading.Lock()
    attempt = limiter._attempt
    started = threading.local()

    def timed_attempt(*a: object, **kw: object) -> object:
        before = time.perf_counter()
        decision = attempt(*a, **kw)  # type: ignore[arg-type]
        elapsed = (time.perf_counter() - before) * 1e6
        if getattr(started, "done", False):  # a thread's first call opens its connection
            with lock:
                out.call_us.append(elapsed)
        started.done = True
        return decision

    limiter._attempt = timed_attempt  # type: ignore[method-assign]

    def worker(index: int) -> None:
        rng = random.Random(job.seed * 1000 + index)
        time.sleep(rng.random() * job.ramp_s)  # workers joining over the ramp, as a pool starts
        while not stop.is_set():
            tokens = rng.choice(SCALE_TOKENS)
            before = time.perf_counter()
            try:
                grant = limiter.acquire(tokens, stop_event=stop)
            except AcquireCancelledError:
                break
            waited = (time.perf_counter() - before) * 1e6
            with lock:
                out.grants_per_worker[index] += 1
                out.events.append((grant.granted_at_us, tokens))
                out.wait_us.append(waited)
            time.sleep(job.call_s)  # the Gemini call

    # The run ends as a pool stops (a stop event cancels the waits), not on a timeout: 100
    # timeouts expiring at one instant would each make a last attempt together, a stampede
    # only a benchmark produces.
    stop = threading.Event()
    time.sleep(max(0.0, job.start_at - time.time()))
    threading.Timer(max(0.0, job.end_at - time.time()), stop.set).start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(job.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    return out


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def jain(values: list[int]) -> float:
    """Jain's fairness index: 1 = perfectly even, 1/n = one worker got everything."""
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else float("nan")


def per_window(
    events: list[tuple[int, int]], start_us: int, window_us: int
) -> list[tuple[int, int]]:
    """(requests, tokens) granted in each whole window from start_us."""
    buckets: dict[int, list[int]] = {}
    last = max(at for at, _ in events)
    for at, tokens in events:
        k = (at - start_us) // window_us
        if k >= 0 and start_us + (k + 1) * window_us <= last:
            bucket = buckets.setdefault(k, [0, 0])
            bucket[0] += 1
            bucket[1] += tokens
    return [(b[0], b[1]) for _, b in sorted(buckets.items())]


def scale(args: argparse.Namespace) -> None:
    from contextlib import nullcontext

    from control_plane.local_services import private_redis

    window_ms = int(args.window_s * 1000)
    rpm = SCALE_RPM_PER_MIN * window_ms // 60_000
    tpm = SCALE_TPM_PER_MIN * window_ms // 60_000
    with private_redis() if args.redis_url is None else nullcontext() as server:
        url = args.redis_url or server.url  # type: ignore[union-attr]
        admin = redis.Redis.from_url(url)
        prefix = f"bench:{uuid.uuid4().hex[:8]}:scale:"
        seconds = args.windows * args.window_s
        start = time.time() + 2.0 + 0.3 * args.processes
        jobs = [
            ScaleJob(
                url,
                prefix,
                args.threads,
                rpm,
                tpm,
                window_ms,
                args.call_ms / 1000,
                start,
                start + seconds,
                seed,
                args.ramp_s,
            )
            for seed in range(args.processes)
        ]
        with ProcessPoolExecutor(
            args.processes, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [pool.submit(run_scale_job, job) for job in jobs]
            time.sleep(max(0.0, start - time.time()))
            admin.config_resetstat()
            cpu_before, wall_before = _redis_cpu(admin), time.time()
            parts = [f.result() for f in futures]
            cpu_after, wall_after = _redis_cpu(admin), time.time()
        stats = admin.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        histogram = server_histogram(admin)
        for key in admin.scan_iter(match=f"{prefix}*", count=1000):
            admin.delete(key)
        admin.close()
    events = sorted(e for p in parts for e in p.events)
    grants = [g for p in parts for g in p.grants_per_worker]
    call_us = [v for p in parts for v in p.call_us]
    wait_us = [v for p in parts for v in p.wait_us]
    windows = per_window(events, events[0][0], window_ms * 1000)[1:]  # after the first window
    utilization = [max(r / rpm, t / tpm) for r, t in windows]
    over = scale_over_admissions(events, window_ms * 1000, rpm, tpm)
    cpu_share = (cpu_after - cpu_before) / (wall_after - wall_before)
    print(
        f"scale: {args.processes} processes x {args.threads} threads = {len(grants)} workers, "
        f"{rpm} requests and {tpm} tokens per {args.window_s:g} s window "
        f"({SCALE_RPM_PER_MIN}/min, {SCALE_TPM_PER_MIN}/min), {args.windows} windows, "
        f"call {args.call_ms} ms, ramp {args.ramp_s:g} s"
    )
    print(f"  grants                      {len(events)}")
    print(
        "  utilization after start-up  "
        f"mean {statistics.mean(utilization):.3f}  min {min(utilization):.3f}  (goal >= 0.98)"
        f"  per window (req, tokens): {windows}"
    )
    print(f"  over-admissions             {over}  (goal 0)")
    print(f"  Jain's fairness (workers)   {jain(grants):.3f}  (goal >= 0.95)")
    print(
        f"  admission call latency      p50 {pct(call_us, 50) / 1000:.2f} ms  "
        f"p99 {pct(call_us, 99) / 1000:.2f} ms  (goal p99 < 5 ms; {len(call_us)} calls)"
    )
    print(
        f"  whole acquire wait          p50 {pct(wait_us, 50) / 1000:.0f} ms  "
        f"p99 {pct(wait_us, 99) / 1000:.0f} ms"
    )
    per_call = stats["usec"] / stats["calls"] if stats["calls"] else float("nan")
    print(
        f"  Redis time per EVALSHA      mean {per_call:.0f} µs, "
        f"p50 <= {bucket(histogram, 0.5)} µs, p99 <= {bucket(histogram, 0.99)} µs "
        f"({stats['calls']} calls; LATENCY HISTOGRAM)"
    )
    print(f"  Redis CPU                   {100 * cpu_share:.1f}% of one core  (goal < 20%)")


def server_histogram(admin: redis.Redis) -> list[tuple[int, int]]:
    """EVALSHA's execution time inside Redis: (bucket upper bound µs, cumulative calls)."""
    reply = admin.execute_command("LATENCY", "HISTOGRAM", "evalsha")
    entry = next(iter(reply.values()), {}) if isinstance(reply, dict) else {}
    raw = entry.get(b"histogram_usec", entry.get("histogram_usec", {}))
    return sorted((int(bound), int(count)) for bound, count in raw.items())


def bucket(histogram: list[tuple[int, int]], q: float) -> int:
    """The smallest histogram bucket bound holding a fraction q of the calls."""
    total = histogram[-1][1] if histogram else 0
    for bound, cumulative in histogram:
        if cumulative >= q * total:
            return bound
    return -1


def scale_over_admissions(
    events: list[tuple[int, int]], window_us: int, limit_req: int, limit_tok: int
) -> int:
    """Admissions whose sliding window (t - W, t] exceeded a limit."""
    count = start = tokens = 0
    for end, (at, weight) in enumerate(events):
        tokens += weight
        while events[start][0] <= at - window_us:
            tokens -= events[start][1]
            start += 1
        if end - start + 1 > limit_req or tokens > limit_tok:
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url",
        default=None,
        help="default: 127.0.0.1:6379/0 (a private redis-server with --scale)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--scale", action="store_true", help="the 100-worker scale run")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=25)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=6.0)
    parser.add_argument("--call-ms", type=int, default=200)
    parser.add_argument(
        "--ramp-s", type=float, default=0.0, help="workers start at random over this many seconds"
    )
    args = parser.parse_args()
    if args.scale:
        scale(args)
        return
    args.redis_url = args.redis_url or "redis://127.0.0.1:6379/0"
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
