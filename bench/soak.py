"""Soak: the real pool at a quota-bound load for a long run, restarting workers every few minutes.

Usage: python bench/soak.py [--minutes 20] [--restart-every 180] [--sample-every 30]
                            [--restart-signal TERM|KILL]
                            [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
                            [--redis-url redis://127.0.0.1:6379/0]

One scheduler and one `dramatiq actors -p 2 -t 2` on a throwaway database, its own Redis
prefix and Dramatiq namespace, and the Gemini emulator (latency 200 ms; the quota, not
the pool, bounds throughput). The queue is topped up so it never runs dry. Every sample
it reads: documents completed (-> documents/min), VmRSS of the scheduler, the dramatiq
master and each child (/proc/PID/status), and the number of Redis keys under the prefix
and namespace. The workers are restarted (SIGTERM, graceful; or SIGKILL) every
--restart-every seconds. At the end it prints the table and a summary: documents/min
flat? RSS start/end per process, Redis keys bounded? quota kept? duplicates?
Nothing is asserted: figures go to stdout.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control_plane.queue.migrate import apply_schema
from tests.faults.checks import duplicate_writes, install_audit
from tests.support.emulator import start_emulator
from tests.support.pool import TEST_API_KEY, PoolHarness, Proc

# Per 10 s window: 120 calls/min for the pool. A window long against the grant-to-arrival
# jitter (a freshly started worker's first call is slower), as Gemini's minute is.
WINDOW_MS = 10_000
POOL_RPM, EMULATOR_RPM = 20, 21
TOP_UP_BELOW, TOP_UP_BY = 150, 150


@dataclass
class Sample:
    """One reading of the run."""

    t: float
    done: int
    rate: float  # documents/min since the previous sample
    rss: dict[str, int]  # process label -> VmRSS kB
    redis_keys: int
    restarted: bool = False


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    restarts: int = 0


def vm_rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(set(found))


def rss_of(scheduler: Proc, workers: Proc) -> dict[str, int]:
    out: dict[str, int] = {}
    for label, pid in (("scheduler", scheduler.popen.pid), ("dramatiq master", workers.popen.pid)):
        rss = vm_rss_kb(pid)
        if rss is not None:
            out[label] = rss
    for n, child in enumerate(children(workers.popen.pid)):
        rss = vm_rss_kb(child)
        if rss is not None:
            out[f"child {n}"] = rss
    return out


def redis_key_count(pool: PoolHarness) -> int:
    client = pool.redis()
    try:
        return sum(
            1
            for pattern in (f"{pool.prefix}*", f"{pool.namespace}:*")
            for _ in client.scan_iter(match=pattern, count=1000)
        )
    finally:
        client.close()


def dsn_for(admin_dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def top_up(pool: PoolHarness, next_seed: int) -> int:
    """Keep the queue from running dry; returns the next sample number to use."""
    ready = pool.status_counts().get(3, 0)
    if ready < TOP_UP_BELOW:
        pool.seed(index=TOP_UP_BY * 2 // 3, acte=TOP_UP_BY // 3, start=next_seed)
        next_seed += TOP_UP_BY
    return next_seed


def soak(args: argparse.Namespace) -> int:
    dbname = f"ocr_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    dsn = dsn_for(args.admin_dsn, dbname)
    apply_schema(dsn)
    install_audit(dsn)
    emu = start_emulator(
        api_key=TEST_API_KEY,
        rpm_limit=EMULATOR_RPM,
        tpm_limit=0,
        window_s=WINDOW_MS / 1000,
        latency_ms=200,
        latency_jitter_ms=40,
    )
    workdir = Path(tempfile.mkdtemp(prefix="ocr-soak-"))
    pool = PoolHarness(dsn, args.redis_url, emu.url, workdir)
    pool.settings_env.update(
        {
            "GEMINI_RATE_WINDOW_MS": str(WINDOW_MS),
            "GEMINI_RPM_LIMIT": str(POOL_RPM),
            "GEMINI_TPM_LIMIT": "1000000",
            "OCR_LEASE_MS": "20000",
            "OCR_SLOT_TTL_MS": "5000",
            "OCR_HEARTBEAT_INTERVAL_MS": "1000",
            "OCR_STATUS_INTERVAL_MS": "60000",
            "OCR_LOG_LEVEL": "WARNING",
        }
    )
    run = Run()
    try:
        next_seed = top_up(pool, 1)
        scheduler = pool.scheduler()
        workers = pool.workers(processes=2, threads=2)
        started = time.monotonic()
        end = started + args.minutes * 60
        last_restart = started
        last_done, last_t = 0, started
        print(
            f"soak: {args.minutes:g} min, restart every {args.restart_every:g} s "
            f"(SIG{args.restart_signal}), quota {POOL_RPM}/{WINDOW_MS / 1000:g} s; "
            f"workdir {workdir}",
            flush=True,
        )
        while time.monotonic() < end:
            time.sleep(min(args.sample_every, max(0.0, end - time.monotonic())))
            restarted = False
            now = time.monotonic()
            if now - last_restart >= args.restart_every and now < end - 1:
                workers.send(
                    getattr(signal, f"SIG{args.restart_signal}"),
                    group=args.restart_signal == "KILL",
                )
                workers.popen.wait(120)
                workers = pool.workers(processes=2, threads=2)
                run.restarts += 1
                restarted, last_restart = True, time.monotonic()
            next_seed = top_up(pool, next_seed)
            done = pool.status_counts().get(5, 0)
            t = time.monotonic()
            sample = Sample(
                t - started,
                done,
                (done - last_done) / ((t - last_t) / 60),
                rss_of(scheduler, workers),
                redis_key_count(pool),
                restarted,
            )
            run.samples.append(sample)
            last_done, last_t = done, t
            print(
                f"  t={sample.t:6.0f}s done={done:5d} rate={sample.rate:6.1f}/min "
                f"keys={sample.redis_keys:4d} rss={sample.rss}"
                + ("  [workers restarted]" if restarted else ""),
                flush=True,
            )
        report(run, pool, emu.stats(), args)
        workers.stop(signal.SIGTERM, timeout=120)
        scheduler.stop(signal.SIGTERM, timeout=60)
        return 0
    finally:
        pool.stop_all()
        pool.cleanup_redis()
        emu.stop()
        with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def report(run: Run, pool: PoolHarness, stats: dict[str, Any], args: argparse.Namespace) -> None:
    samples = run.samples
    print(
        "\n| t (s) | done | docs/min | scheduler RSS MB | master RSS MB | children RSS MB "
        "| Redis keys | event |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in samples:
        kids = " / ".join(
            f"{v / 1024:.1f}" for k, v in sorted(s.rss.items()) if k.startswith("child")
        )
        print(
            f"| {s.t:.0f} | {s.done} | {s.rate:.1f} | {s.rss.get('scheduler', 0) / 1024:.1f} "
            f"| {s.rss.get('dramatiq master', 0) / 1024:.1f} | {kids} | {s.redis_keys} "
            f"| {'workers restarted' if s.restarted else ''} |"
        )
    steady = [s.rate for s in samples[1:]]  # the first sample includes start-up
    first, last = samples[0], samples[-1]
    print("\nSummary")
    print(
        f"  duration: {last.t / 60:.1f} min, {run.restarts} worker restart(s) "
        f"(SIG{args.restart_signal})"
    )
    print(
        f"  documents completed: {last.done}; docs/min over samples after the first: "
        f"min {min(steady):.1f} / median {statistics.median(steady):.1f} / max {max(steady):.1f}"
        f" (quota bound {POOL_RPM * 60_000 / WINDOW_MS:.0f}/min for single-call documents)"
    )
    half = len(steady) // 2
    if half:
        print(
            f"  docs/min first half {statistics.mean(steady[:half]):.1f}, second half "
            f"{statistics.mean(steady[half:]):.1f}"
        )
    print(
        f"  scheduler RSS: start {first.rss.get('scheduler', 0) / 1024:.1f} MB, end "
        f"{last.rss.get('scheduler', 0) / 1024:.1f} MB"
    )
    # Workers are replaced at each restart: compare each generation's first and last
    # sample (the sample taken at a restart is still booting and belongs to none).
    generations: list[list[Sample]] = [[]]
    for s in samples:
        if s.restarted:
            generations.append([])
        else:
            generations[-1].append(s)
    for gen in (g for g in generations if g):
        a, b = gen[0], gen[-1]
        print(
            f"  worker generation t={a.t:.0f}..{b.t:.0f}s: "
            + ", ".join(
                f"{k} {a.rss.get(k, 0) / 1024:.1f}->{b.rss.get(k, 0) / 1024:.1f} MB"
                for k in sorted(a.rss)
                if k != "scheduler"
            )
        )
    keys = [s.redis_keys for s in samples]
    print(f"  Redis keys under prefix+namespace: start {keys[0]}, max {max(keys)}, end {keys[-1]}")
    print(
        f"  emulator: {stats['requests']} calls, window exceeded {stats['window_exceeded']}, "
        f"429s {stats['sent_429']}, max calls per document {stats['max_calls_per_document']} "
        f"(peak {stats['window']['max_requests_offered']}/{EMULATOR_RPM} per window)"
    )
    print(f"  result writes beyond the first per document: {duplicate_writes(pool.dsn)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--restart-every", type=float, default=180.0, help="seconds")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds")
    parser.add_argument("--restart-signal", choices=["TERM", "KILL"], default="TERM")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    return soak(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
