"""Queue store benchmark: claim+complete throughput and the cost of the ready count.

Usage: python bench/store.py [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
Creates a throwaway database, prints figures, drops it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg
import psycopg.conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control_plane.queue.migrate import apply_schema
from control_plane.queue.postgres import PostgresStore


def _dsn_for(admin_dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def _fill(dsn: str, total: int, ready: int) -> None:
    """`total` rows: `ready` ready (status 3), the rest done (status 5), types alternating."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE extraction_queue RESTART IDENTITY")
        conn.execute(
            "INSERT INTO extraction_queue (document_source, storage_path, status_id)"
            " SELECT CASE WHEN g %% 2 = 0 THEN 'index' ELSE 'acte' END, 'b/' || g || '.pdf',"
            " CASE WHEN g <= %s THEN 3 ELSE 5 END FROM generate_series(1, %s) g",
            (ready, total),
        )
        conn.execute("VACUUM ANALYZE extraction_queue")


def bench_throughput(store: PostgresStore, dsn: str, batch: int, documents: int) -> float:
    _fill(dsn, documents, documents)
    started = time.perf_counter()
    done = 0
    while done < documents:
        docs = store.claim("index", batch, "bench", 600_000) or store.claim(
            "acte", batch, "bench", 600_000
        )
        if not docs:
            break
        for doc in docs:
            store.complete(doc.id, doc.lease_token, "text", 258, 10)
        done += len(docs)
    return done / (time.perf_counter() - started)


def bench_counts(store: PostgresStore, repeats: int = 15) -> float:
    store.counts()  # warm
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.counts()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--documents", type=int, default=3000)
    args = parser.parse_args()
    name = f"ocr_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = _dsn_for(args.admin_dsn, name)
    try:
        apply_schema(dsn)
        store = PostgresStore("bench", dsn, max_size=2)
        try:
            print("claim + complete, one thread (documents/s):")
            for batch in (1, 10, 100):
                rate = bench_throughput(store, dsn, batch, args.documents)
                print(f"  batch {batch:>3}: {rate:8.0f} documents/s")
            print("claims only (documents/s, batch 100):")
            _fill(dsn, args.documents * 10, args.documents * 10)
            started = time.perf_counter()
            claimed = sum(len(store.claim("index", 100, "bench", 600_000)) for _ in range(100))
            print(f"  {claimed / (time.perf_counter() - started):8.0f} claims/s")
            print("ocr_counts() median latency (ms):")
            for total in (10_000, 100_000, 1_000_000):
                for ready_share in (0.01, 1.0):
                    _fill(dsn, total, int(total * ready_share))
                    ms = bench_counts(store)
                    print(f"  {total:>9,} rows, {ready_share:>4.0%} ready: {ms:7.2f} ms")
        finally:
            store.close()
    finally:
        with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
