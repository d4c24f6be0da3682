"""Pipeline benchmark: the real pool (scheduler + dramatiq + emulator) against its bounds.

Usage: python bench/pipeline.py [--only throughput,micro,weighting,lending,hysteresis]
                                [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]

1. Throughput: documents/min in steady state against min(quota, pool x 60 / latency),
   for a latency-bound and a quota-bound setting (single-chunk documents: one doc = one
   call), with the CPU the scheduler and the dramatiq processes spent per document.
2. Micro: the pure control-plane operations of one document (claim, take_slot, start,
   acquire, settle, complete, release) in one process, wall and client CPU per document.
3. Strategies beyond the seed, each against the plain seed rule on the same workload
   (actes much slower than index documents): time weighting, lending idle slots,
   hysteresis (slot flips on a noisy queue).

Each run gets a throwaway database, its own Redis prefix and Dramatiq namespace, and an
emulator; nothing shared is touched. Figures go to stdout; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control_plane.dispatch import EnqueuedSet
from control_plane.keys import Keys
from control_plane.logs import setup_logging
from control_plane.pacing import record_job_seconds, wake_slot_waiters
from control_plane.pool import SlotLease, WorkerPool
from control_plane.queue.migrate import apply_schema
from control_plane.queue.postgres import PostgresStore
from control_plane.rate_limiter import GeminiRateLimiter
from tests.support.emulator import start_emulator
from tests.support.pool import TEST_API_KEY, PoolHarness

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- process CPU (from /proc, no psutil) ---


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime in ticks) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds (user + system) of the roots and all their live descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack, seen = 0, list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        stack.extend(children.get(pid, []))
    return total / CLK_TCK


# --- databases ---


def _dsn_for(admin_dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


class Databases:
    """Throwaway databases, dropped at the end."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.names: list[str] = []

    def create(self) -> str:
        name = f"bench_pipeline_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        dsn = _dsn_for(self.admin_dsn, name)
        apply_schema(dsn)
        return dsn

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- one live run ---


@dataclass
class Run:
    """What a scenario needs: emulator, pool settings, workload."""

    name: str
    emulator: dict[str, Any]
    env: dict[str, str]
    index: int
    acte: int
    index_pages: int = 1
    acte_pages: int = 1
    processes: int = 1
    threads: int = 6
    # (seconds after the first start, index, acte): documents added during the run
    arrivals: list[tuple[float, int, int]] = field(default_factory=list)
    timeout_s: float = 120.0
    stop_after: int | None = None  # stop once this many are done (None: all)


@dataclass
class Outcome:
    """What a run measured."""

    completions: list[float]  # epoch seconds, sorted
    first_start: float
    cpu_samples: list[tuple[float, float]]  # (epoch seconds, CPU seconds of our processes)
    flips: int
    allocations: list[tuple[float, int, int]]
    emulator: dict[str, Any]
    done: int
    by_type_done: dict[str, float]  # type -> epoch seconds its last document completed
    job_seconds: list[float]  # started_at -> completed_at per document (slot busy time)

    def rate_between(self, start: float, end: float) -> tuple[float, int]:
        """Documents/min completed in [start, end] and how many."""
        n = sum(1 for t in self.completions if start <= t <= end)
        return n * 60.0 / (end - start), n

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds spent in [start, end] (nearest samples inside)."""
        inside = [s for s in self.cpu_samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        return inside[-1][1] - inside[0][1]

    @property
    def makespan(self) -> float:
        return self.completions[-1] - self.first_start


def _epoch(ts: datetime | None) -> float:
    return ts.timestamp() if ts else 0.0


def run_pool(dbs: Databases, run: Run, workdir: Path) -> Outcome:
    """Start emulator, scheduler and workers on a fresh database; wait until done."""
    dsn = dbs.create()
    emu = start_emulator(api_key=TEST_API_KEY, **run.emulator)
    harness = PoolHarness(dsn, REDIS_URL, emu.url, workdir / run.name.replace(" ", "_"))
    harness.settings_env.update(run.env)
    client = harness.redis()
    total = run.index + run.acte + sum(i + a for _, i, a in run.arrivals)
    target = run.stop_after or total
    try:
        harness.seed(run.index, 0, pages=run.index_pages)
        harness.seed(0, run.acte, start=100_000, pages=run.acte_pages)
        sched = harness.scheduler()
        workers = harness.workers(processes=run.processes, threads=run.threads)
        roots = [sched.popen.pid, workers.popen.pid]
        samples: list[tuple[float, float]] = []
        allocations: list[tuple[float, int, int]] = []
        arrivals = sorted(run.arrivals)
        first_start: float | None = None
        seed_no = 200_000
        deadline = time.monotonic() + run.timeout_s
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                now = time.time()
                samples.append((now, tree_cpu_seconds(roots)))
                raw = client.get(f"{harness.prefix}worker_pool:allocation")
                if raw:
                    a = json.loads(raw)
                    if not allocations or allocations[-1][1:] != (a["index"], a["acte"]):
                        allocations.append((now, a["index"], a["acte"]))
                row = conn.execute(
                    "SELECT min(started_at), count(*) FILTER (WHERE status_id = 5) "
                    "FROM extraction_queue"
                ).fetchone()
                assert row is not None
                if row[0] is not None and first_start is None:
                    first_start = _epoch(row[0])
                while arrivals and first_start is not None and now - first_start >= arrivals[0][0]:
                    _, add_i, add_a = arrivals.pop(0)
                    harness.seed(add_i, 0, start=seed_no, pages=run.index_pages)
                    harness.seed(0, add_a, start=seed_no + add_i, pages=run.acte_pages)
                    seed_no += add_i + add_a
                if int(row[1]) >= target and not arrivals:
                    break
                if time.monotonic() > deadline or not sched.alive() or not workers.alive():
                    raise RuntimeError(
                        f"{run.name}: {row[1]}/{target} done; "
                        f"scheduler log tail:\n{sched.log()[-1500:]}\n"
                        f"workers log tail:\n{workers.log()[-1500:]}"
                    )
                time.sleep(0.2)
            rows = conn.execute(
                "SELECT completed_at, document_source, started_at FROM extraction_queue "
                "WHERE status_id = 5 ORDER BY completed_at"
            ).fetchall()
        stats = emu.stats()
    finally:
        harness.stop_all()
        harness.cleanup_redis()
        client.close()
        emu.stop()
    by_type: dict[str, float] = {}
    for ts, source, _ in rows:
        by_type[source] = max(by_type.get(source, 0.0), _epoch(ts))
    return Outcome(
        completions=[_epoch(r[0]) for r in rows],
        first_start=first_start or 0.0,
        cpu_samples=samples,
        flips=max(0, len(allocations) - 1),
        allocations=allocations,
        emulator=stats,
        done=len(rows),
        by_type_done=by_type,
        job_seconds=[_epoch(r[0]) - _epoch(r[2]) for r in rows],
    )


# --- 1. throughput against the bound ---

BASE_ENV = {
    "OCR_WORKER_POOL_SIZE": "4",
    "OCR_FEED_INTERVAL_MS": "200",
    "OCR_REBALANCE_INTERVAL_MS": "1000",
    "OCR_LOG_LEVEL": "WARNING",
}


def throughput(dbs: Databases, workdir: Path, print_row: Callable[..., None]) -> None:
    latency_ms = 500
    settings = [
        # (name, emulator, pool limiter env, bound docs/min, warm-up s, measured s, docs)
        (
            "latency-bound",
            {"latency_ms": latency_ms},
            {"GEMINI_RPM_LIMIT": "100000", "GEMINI_RATE_WINDOW_MS": "60000"},
            min(100_000, 4 * 60_000 / latency_ms),
            5.0,
            30.0,
            290,
        ),
        (
            "quota-bound",
            {"latency_ms": 20, "rpm_limit": 62, "window_s": 10},
            {"GEMINI_RPM_LIMIT": "60", "GEMINI_RATE_WINDOW_MS": "10000"},
            min(60 * 6, 4 * 60_000 / 20),
            10.0,
            40.0,
            330,
        ),
    ]
    print("\n== Throughput against the bound (pool 4, single-chunk documents) ==")
    print(
        f"{'setting':<15} {'bound/min':>9} {'achieved/min':>12} {'%':>6} {'docs':>5} "
        f"{'CPU ms/doc':>10} {'job s':>6} {'429s':>5}"
    )
    for name, emulator, env, bound, warmup, measured, docs in settings:
        run = Run(
            name,
            emulator,
            {**BASE_ENV, **env},
            index=docs // 2,
            acte=docs - docs // 2,
            timeout_s=warmup + measured + 60,
        )
        out = run_pool(dbs, run, workdir)
        start = out.first_start + warmup
        end = start + measured
        if out.completions[-1] < end:
            raise RuntimeError(f"{name}: the queue ran dry before the measured window ended")
        rate, n = out.rate_between(start, end)
        cpu = out.cpu_between(start, end)
        cpu_ms = 1000 * cpu / n if n else float("nan")
        print_row(
            f"{name:<15} {bound:>9.0f} {rate:>12.1f} {100 * rate / bound:>5.1f}% {n:>5} "
            f"{cpu_ms:>10.1f} {statistics.median(out.job_seconds):>6.3f} "
            f"{out.emulator.get('sent_429', 0):>5}"
        )


# --- 2. the control plane's own operations per document ---


def micro(dbs: Databases, documents: int = 400) -> None:
    dsn = dbs.create()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
            " SELECT 'index', 'b/' || g || '.pdf', 3 FROM generate_series(1, %s) g",
            (documents,),
        )
    client = redis.Redis.from_url(REDIS_URL)
    keys = Keys(prefix=f"bench:{uuid.uuid4().hex[:8]}:")
    pool = WorkerPool(
        client,
        keys,
        pool_size=4,
        costs={"index": (1.0, 1.0), "acte": (1.0, 1.0)},
        cpu_budget=100,
        ram_budget=100,
    )
    pool.publish_allocation({"index": 2, "acte": 2}, version=1, reason="bench")
    limiter = GeminiRateLimiter(
        client, rpm_limit=10**6, tpm_limit=10**9, window_ms=60_000, keys=keys
    )
    store = PostgresStore("dev", dsn)
    enqueued = EnqueuedSet(client, keys)
    steps: dict[str, float] = {}

    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        steps[step] = steps.get(step, 0.0) + now - clock[0]
        clock[0] = now

    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(documents):
            clock[0] = time.perf_counter()
            doc = store.claim("index", 1, "bench", 600_000)[0]
            lap("claim")
            slot = pool.take_slot("index", "bench-w", "dev/1")
            assert isinstance(slot, SlotLease)
            lap("take_slot")
            delivery = store.start(doc.id, doc.lease_token, "bench-w", 600_000, 3)
            assert delivery is not None
            lap("start")
            grant = limiter.acquire(258)
            lap("acquire")
            limiter.settle(grant, 250)
            lap("settle")
            store.complete(doc.id, delivery.lease_token, "t", 250, 10)
            lap("complete")
            pool.release_slot(slot)
            lap("release")
            enqueued.add("index", [f"dev/{doc.id}"], 0)
            enqueued.remove("index", f"dev/{doc.id}")
            record_job_seconds(client, keys, "index", 0.5)
            wake_slot_waiters(client, keys)
            lap("enqueued+timing+wake")
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
    finally:
        store.close()
        for key in client.scan_iter(match=f"{keys.prefix}*"):
            client.delete(key)
        client.close()
    print("\n== Control-plane operations per document (one process, sequential) ==")
    for step, seconds in steps.items():
        print(f"  {step:<21} {1000 * seconds / documents:6.2f} ms wall")
    print(
        f"  {'total':<21} {1000 * wall / documents:6.2f} ms wall, "
        f"{1000 * cpu / documents:.2f} ms client CPU per document"
    )


# --- 3. strategies beyond the seed ---


def strategies(
    dbs: Databases, workdir: Path, which: set[str], print_row: Callable[..., None]
) -> None:
    # Actes take ~4x longer than index documents (pages x per-page latency), as in real life.
    emulator = {"latency_ms": 100, "latency_per_page_ms": 200}
    base = {**BASE_ENV, "OCR_REBALANCE_INTERVAL_MS": "2000", "GEMINI_RPM_LIMIT": "100000"}
    seed = {
        "OCR_ALLOCATION_WEIGHTING": "count",
        "OCR_ALLOCATION_LEND_IDLE": "false",
        "OCR_ALLOCATION_HYSTERESIS": "0",
    }
    print(
        "\n== Strategies against the seed rule (pool 4, index 1 page ~0.3 s, acte 4 pages "
        "~0.9 s) =="
    )
    print(
        f"{'workload':<23} {'rule':<20} {'makespan s':>10} {'docs/min':>9} {'flips':>6} "
        f"{'index done s':>12} {'acte done s':>11}"
    )

    def compare(
        workload: str,
        make: Callable[[dict[str, str]], Run],
        variants: list[tuple[str, dict[str, str]]],
    ) -> None:
        for label, env in variants:
            out = run_pool(dbs, make({**base, **seed, **env}), workdir)
            rate = 60 * out.done / out.makespan
            done = {t: out.by_type_done.get(t, 0.0) - out.first_start for t in ("index", "acte")}
            print_row(
                f"{workload:<23} {label:<20} {out.makespan:>10.1f} {rate:>9.1f} "
                f"{out.flips:>6} {done['index']:>12.1f} {done['acte']:>11.1f}"
            )

    if "weighting" in which:
        compare(
            "index 160 / acte 40",
            lambda env: Run("weighting", emulator, env, index=160, acte=40, acte_pages=4),
            [("seed (count)", {}), ("time-weighted", {"OCR_ALLOCATION_WEIGHTING": "time"})],
        )
    if "lending" in which:
        compare(
            "index 200, +20 acte@10s",
            lambda env: Run(
                "lending", emulator, env, index=200, acte=0, acte_pages=4, arrivals=[(10.0, 0, 20)]
            ),
            [("seed (reserve min)", {}), ("lend idle", {"OCR_ALLOCATION_LEND_IDLE": "true"})],
        )
    if "hysteresis" in which:
        compare(
            "noisy 100/60 + trickle",
            lambda env: Run(
                "hysteresis",
                emulator,
                env,
                index=100,
                acte=60,
                acte_pages=1,
                arrivals=[(t, 6, 3) for t in range(2, 30, 2)],
            ),
            [("seed", {}), ("hysteresis 0.25", {"OCR_ALLOCATION_HYSTERESIS": "0.25"})],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--only", default="throughput,micro,weighting,lending,hysteresis")
    args = parser.parse_args(argv)
    which = set(args.only.split(","))
    setup_logging("WARNING")
    dbs = Databases(args.admin_dsn)
    rows: list[str] = []

    def print_row(line: str) -> None:
        rows.append(line)
        print(line, flush=True)

    try:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            if "throughput" in which:
                throughput(dbs, Path(tmp), print_row)
            if "micro" in which:
                micro(dbs)
            if which & {"weighting", "lending", "hysteresis"}:
                strategies(dbs, Path(tmp), which, print_row)
    finally:
        dbs.drop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
