"""Autopilot benchmark (issue 15): fixed pools against OCR_WORKER_POOL_SIZE=auto.

Usage: python bench/autopilot.py [--pools 2,4,8,16,32] [--scenarios normal,tight,shift]
                                 [--index 300] [--acte 100]
                                 [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]

The real pool (scheduler + dramatiq workers, 2 processes x 17 threads for every run) drains
a backlog on the Gemini emulator. Latency is drawn per document: index documents have 1
page, actes 4, the emulator sleeps (base + per page) x a Pareto(3) draw (heavy tail).
Durations are scaled down (a 10 s quota window, 2 s rebalances) so the whole bench runs in
minutes on 2 cores. Scenarios:

- normal: GEMINI_RPM_LIMIT 200 per 10 s window (the quota binds from ~6 slots);
- roomy:  GEMINI_RPM_LIMIT 400 per 10 s window (on 2 shared cores the CPU binds first), twice
          the backlog (a drain of about ten rebalances, not five);
- tight:  GEMINI_RPM_LIMIT 100 per 10 s window (the quota binds), half the backlog;
- shift:  as normal, the latency triples once half the backlog is done.

For each run: drain time (first start to last completion), API usage per 10 s window of
the run (requests the emulator admitted / the limit: mean and max over tumbling windows,
and the peak sliding window the emulator saw), 429s sent by the emulator, quota
violations (emulator window above its limit), peak CPU (vCPU, 1 s samples) and peak RSS
(GB) of the worker processes, the largest allocation total; for auto, how long after
the latency change the published size first moved. Figures go to stdout; nothing is
asserted. The "best fixed" pool is the fastest one whose API usage stayed <= 80% in every
window; auto is compared with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline import CLK_TCK, REDIS_URL, Databases, _proc_table
from tests.support.emulator import start_emulator
from tests.support.pool import TEST_API_KEY, PoolHarness

WINDOW_S = 10
EMULATOR_SLACK = 2  # the emulator allows a little more than our limiter (its clock differs)
TAIL_ALPHA = 3.0
BASE_LATENCY_MS = 60.0
PER_PAGE_MS = 90.0  # index (1 page) ~0.15 s, acte (4 pages) ~0.42 s, x Pareto(3) (mean 1.5)


@dataclass
class Scenario:
    name: str
    rpm_limit: int
    shift_factor: float = 1.0  # latency multiplied by this at half the backlog
    docs_factor: float = 1.0  # share of --index / --acte this scenario drains


SCENARIOS = {
    "normal": Scenario("normal", 200),
    # the quota never binds (2 shared cores do), twice the backlog: the drain is long enough
    # (about ten rebalances) for the pool's growth from the seed's 4 not to be all of it
    "roomy": Scenario("roomy", 400, docs_factor=2.0),
    "tight": Scenario("tight", 100, docs_factor=0.5),
    "shift": Scenario("shift", 200, shift_factor=3.0),
}


@dataclass
class Result:
    scenario: str
    pool: str
    drain_s: float
    usage_mean: float
    usage_max: float
    usage_peak_sliding: float
    sent_429: int
    violations: bool
    peak_cpu: float
    peak_rss_gb: float
    max_total: int
    done: int
    follow_s: float | None = None
    totals: list[tuple[float, int]] = field(default_factory=list)


def _tree(roots: list[int]) -> list[int]:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], list(roots)
    while stack:
        pid = stack.pop()
        if pid in table and pid not in out:
            out.append(pid)
            stack.extend(children.get(pid, []))
    return out


def tree_usage(roots: list[int]) -> tuple[float, float]:
    """(CPU seconds, RSS GB) of the roots and their descendants."""
    table = _proc_table()
    cpu, rss = 0.0, 0.0
    for pid in _tree(roots):
        cpu += table[pid][1] / CLK_TCK
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            rss += pages * 4096 / 2**30
        except (OSError, ValueError, IndexError):
            pass
    return cpu, rss


def window_usage(times: list[float], limit: int, start: float, end: float) -> tuple[float, float]:
    """Mean and max of requests / limit over the tumbling windows of [start, end]."""
    if not times or end <= start:
        return 0.0, 0.0
    n = max(1, int((end - start) // WINDOW_S))
    counts = [0] * n
    for t in times:
        i = int((t - start) // WINDOW_S)
        if 0 <= i < n:
            counts[i] += 1
    usages = [c / limit for c in counts]
    return sum(usages) / n, max(usages)


def run_one(
    dbs: Databases,
    scenario: Scenario,
    pool: str,
    index: int,
    acte: int,
    workdir: Path,
    log_level: str = "WARNING",
    rebalance_ms: int = 2000,
) -> Result:
    dsn = dbs.create()
    emu = start_emulator(
        api_key=TEST_API_KEY,
        latency_ms=BASE_LATENCY_MS,
        latency_per_page_ms=PER_PAGE_MS,
        latency_tail_alpha=TAIL_ALPHA,
        rpm_limit=scenario.rpm_limit + EMULATOR_SLACK,
        window_s=WINDOW_S,
        seed=15,
    )
    harness = PoolHarness(dsn, REDIS_URL, emu.url, workdir / f"{scenario.name}-{pool}")
    harness.settings_env.update(
        {
            "OCR_WORKER_POOL_SIZE": pool,
            "OCR_WORKER_POOL_MAX": "32",
            "OCR_MIN_INDEX_WORKERS": "1",
            "OCR_MIN_ACTE_WORKERS": "1",
            "GEMINI_RPM_LIMIT": str(scenario.rpm_limit),
            "GEMINI_RATE_WINDOW_MS": str(WINDOW_S * 1000),
            "OCR_REBALANCE_INTERVAL_MS": str(rebalance_ms),
            "OCR_FEED_INTERVAL_MS": "200",
            "SERVER_MAX_CPU": "200",  # the declared costs must not bind here
            "SERVER_MAX_RAM": "400",
            "OCR_LOG_LEVEL": log_level,
        }
    )
    client = harness.redis()
    total_docs = index + acte
    totals: list[tuple[float, int]] = []
    peak_cpu = peak_rss = 0.0
    shift_at: float | None = None
    try:
        harness.seed(index, 0, pages=1)
        harness.seed(0, acte, start=100_000, pages=4)
        harness.scheduler()
        workers = harness.workers(processes=2, threads=17)
        started = time.time()
        last_cpu: tuple[float, float] | None = None
        done = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.time() - started < 600:
                now = time.time()
                raw = client.get(f"{harness.prefix}worker_pool:allocation")
                if raw:
                    t = int(json.loads(raw)["total"])
                    if not totals or totals[-1][1] != t:
                        totals.append((now, t))
                cpu, rss = tree_usage([workers.popen.pid])
                peak_rss = max(peak_rss, rss)
                if last_cpu is not None and now - last_cpu[0] >= 1.0:
                    peak_cpu = max(peak_cpu, (cpu - last_cpu[1]) / (now - last_cpu[0]))
                    last_cpu = (now, cpu)
                elif last_cpu is None:
                    last_cpu = (now, cpu)
                row = conn.execute(
                    "SELECT count(*) FROM extraction_queue WHERE status_id IN (4, 5)"
                ).fetchone()
                done = int(row[0]) if row else 0
                if shift_at is None and scenario.shift_factor != 1.0 and done >= total_docs / 2:
                    emu.configure(
                        latency_ms=BASE_LATENCY_MS * scenario.shift_factor,
                        latency_per_page_ms=PER_PAGE_MS * scenario.shift_factor,
                    )
                    shift_at = time.time()
                if done >= total_docs:
                    break
                time.sleep(0.25)
            times = conn.execute(
                "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(completed_at))"
                " FROM extraction_queue"
            ).fetchone()
        stats = emu.stats(log=True)
    finally:
        harness.stop_all()
        harness.cleanup_redis()
        emu.stop()
    first, last = (float(times[0] or 0), float(times[1] or 0)) if times else (0.0, 0.0)
    calls = [e["t"] for e in stats.get("log", []) if not e.get("fault")]
    mean, peak = window_usage(calls, scenario.rpm_limit, first, last)
    follow = None
    if shift_at is not None:
        moved = [t for t, _ in totals if t > shift_at]
        follow = (moved[0] - shift_at) if moved else None
    return Result(
        scenario=scenario.name,
        pool=pool,
        drain_s=last - first,
        usage_mean=mean,
        usage_max=peak,
        usage_peak_sliding=stats["window"]["max_requests_admitted"] / scenario.rpm_limit,
        sent_429=int(stats["sent_429"]),
        violations=bool(stats["window_exceeded"]),
        peak_cpu=peak_cpu,
        peak_rss_gb=peak_rss,
        max_total=max((t for _, t in totals), default=0),
        done=done,
        follow_s=follow,
        totals=totals,
    )


def report(results: list[Result]) -> None:
    print(
        f"{'scenario':<8} {'pool':>5} {'done':>5} {'drain s':>8} {'use mean':>9} "
        f"{'use max':>8} {'sliding':>8} {'429s':>5} {'viol':>5} {'cpu':>5} {'rss GB':>7} "
        f"{'max tot':>7} {'follow s':>8}"
    )
    for r in results:
        follow = f"{r.follow_s:.1f}" if r.follow_s is not None else "-"
        print(
            f"{r.scenario:<8} {r.pool:>5} {r.done:>5} {r.drain_s:>8.1f} {r.usage_mean:>8.0%} "
            f"{r.usage_max:>8.0%} {r.usage_peak_sliding:>8.0%} {r.sent_429:>5} "
            f"{'yes' if r.violations else 'no':>5} {r.peak_cpu:>5.2f} {r.peak_rss_gb:>7.2f} "
            f"{r.max_total:>7} {follow:>8}",
            flush=True,
        )


def summary(results: list[Result]) -> None:
    print("\n== auto against the best fixed pool with API usage <= 80% in every window ==")
    for scenario in dict.fromkeys(r.scenario for r in results):
        rows = [r for r in results if r.scenario == scenario]
        fixed = [r for r in rows if r.pool != "auto" and r.usage_max <= 0.8]
        auto = next((r for r in rows if r.pool == "auto"), None)
        if not fixed or auto is None:
            print(f"{scenario}: no fixed pool within 80% or no auto run")
            continue
        best = min(fixed, key=lambda r: r.drain_s)
        ratio = auto.drain_s / best.drain_s if best.drain_s else float("nan")
        print(
            f"{scenario}: best fixed {best.pool} drains in {best.drain_s:.1f} s; auto "
            f"{auto.drain_s:.1f} s ({ratio:.2f}x), auto API usage max {auto.usage_max:.0%}, "
            f"429s {auto.sent_429}, sizes {[t for _, t in auto.totals]}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--pools", default="2,4,8,16,32,auto")
    parser.add_argument("--scenarios", default="normal,tight,shift")
    parser.add_argument("--index", type=int, default=300)
    parser.add_argument("--acte", type=int, default=100)
    parser.add_argument(
        "--logs", default=None, help="keep the scheduler and worker logs in this directory"
    )
    parser.add_argument("--log-level", default="WARNING", help="their OCR_LOG_LEVEL")
    parser.add_argument(
        "--rebalance-ms",
        type=int,
        default=2000,
        help="OCR_REBALANCE_INTERVAL_MS (2000: a fifth of the 10 s window; 5000 keeps the "
        "defaults' proportion, 30 s rebalances in a 60 s window)",
    )
    args = parser.parse_args(argv)
    dbs = Databases(args.admin_dsn)
    results: list[Result] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-autopilot-") as tmp,
        ):
            workdir = Path(args.logs) if args.logs else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            for name in args.scenarios.split(","):
                for pool in args.pools.split(","):
                    sc = SCENARIOS[name]
                    index = round(args.index * sc.docs_factor)
                    acte = round(args.acte * sc.docs_factor)
                    r = run_one(
                        dbs, sc, pool, index, acte, workdir, args.log_level, args.rebalance_ms
                    )
                    results.append(r)
                    report([r])
    finally:
        dbs.drop_all()
    print()
    report(results)
    summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
