"""Apply the queue schema (`control_plane/sql/*.sql`) to every environment with a database URL.

Layout (issue 12):
- `002_functions.sql` is *repeatable*: the SQL functions (CREATE OR REPLACE), re-applied
  whenever its checksum differs from the one recorded;
- every other `NNN_*.sql` is a *versioned* migration, applied once per database in name
  order and recorded in `ocr_schema_migrations` (name, checksum, applied_at). Versioned
  files run first, so the functions always see the columns they use.

Each file is split into statements (`split_statements`, pure). Consecutive ordinary
statements run in one transaction; `CREATE/DROP INDEX CONCURRENTLY` run on their own
outside any transaction, skipped when the catalog already has the valid index (an invalid
one left by an interrupted build is dropped and rebuilt). Everything runs under a
`lock_timeout`, so a migration never queues for long behind a reader while the pool's own
statements queue behind it; a lock timeout is a `TransientError` (retry the deploy later).
A migration with nothing to do only reads `ocr_schema_migrations`: it takes no lock on the
queue table. Two concurrent migrations serialize on an advisory lock.

Migrations need a session (a direct connection or Supabase's session pooler, port 5432):
a transaction-mode pooler (port 6543) is refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg

from control_plane.errors import PermanentError, TransientError
from control_plane.logs import log_event
from control_plane.queue.pooler import check_dsn, is_transaction_pooler, libpq_dsn, safe_db_error
from control_plane.queue.security import check_security

if TYPE_CHECKING:
    from control_plane.config import Settings

# Arbitrary constant: the advisory lock key of schema migrations.
_MIGRATION_LOCK_KEY = 0x0C5_0001
REPEATABLE = "002_functions.sql"
MIGRATIONS_TABLE = "ocr_schema_migrations"
LOCK_TIMEOUT_MS = 5000  # the longest a migration statement waits for a lock

_MIGRATIONS_DDL = f"""
DO $$
DECLARE
    r text;
BEGIN
    IF to_regclass('{MIGRATIONS_TABLE}') IS NULL THEN
        CREATE TABLE {MIGRATIONS_TABLE} (
            name       text PRIMARY KEY,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE {MIGRATIONS_TABLE} ENABLE ROW LEVEL SECURITY;
        FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
                EXECUTE format('REVOKE ALL ON TABLE {MIGRATIONS_TABLE} FROM %I', r);
            END IF;
        END LOOP;
    END IF;
END
$$
"""

_CONCURRENT_RE = re.compile(
    r"^\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX\s+\w+)\s+CONCURRENTLY\b",
    re.IGNORECASE,
)
_CREATE_CONCURRENT_RE = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+([A-Za-z_][\w$]*)",
    re.IGNORECASE,
)
_DROP_CONCURRENT_RE = re.compile(
    r"^\s*DROP\s+INDEX\s+CONCURRENTLY\s+IF\s+EXISTS\s+([A-Za-z_][\w$]*)", re.IGNORECASE
)


@dataclass(frozen=True)
class SqlFile:
    """One shipped SQL file."""

    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def repeatable(self) -> bool:
        return self.name == REPEATABLE


@dataclass
class MigrationReport:
    """What `migrate` did in one environment, and what it recommends."""

    environment: str
    applied: list[str] = field(default_factory=list)
    security_statements: list[str] = field(default_factory=list)


def schema_files() -> list[tuple[str, str]]:
    """(file name, SQL text) of every shipped schema file, in name order."""
    folder = resources.files("control_plane").joinpath("sql")
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    return [(e.name, e.read_text(encoding="utf-8")) for e in entries]


def sql_files() -> list[SqlFile]:
    return [SqlFile(name, text) for name, text in schema_files()]


def pending(files: Iterable[SqlFile], applied: Mapping[str, str]) -> list[SqlFile]:
    """Pure: the files to apply, in order, given the recorded {name: checksum}.

    Versioned files not yet recorded, in name order, then the repeatable file when its
    checksum differs from the recorded one (or it was never applied).
    """
    ordered = sorted(files, key=lambda f: f.name)
    todo = [f for f in ordered if not f.repeatable and f.name not in applied]
    todo += [f for f in ordered if f.repeatable and applied.get(f.name) != f.checksum]
    return todo


def changed_after_applied(files: Iterable[SqlFile], applied: Mapping[str, str]) -> list[str]:
    """Pure: versioned files whose text changed after they were applied (not re-run)."""
    return [
        f.name
        for f in files
        if not f.repeatable and f.name in applied and applied[f.name] != f.checksum
    ]


def split_statements(text: str) -> list[str]:
    """Pure: split SQL text into top-level statements (comments, quotes, $$ bodies kept whole).

    Statements consisting only of comments are dropped.
    """
    statements: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif ch == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch in ("'", '"'):
            i += 1
            while i < n:
                if text[i] == ch:
                    if i + 1 < n and text[i + 1] == ch:  # doubled quote inside
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif ch == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])
            if m and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                tag = m.group(0)
                end = text.find(tag, i + len(tag))
                i = n if end < 0 else end + len(tag)
            else:
                i += 1
        elif ch == ";":
            statements.append(text[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    """True when a statement holds something besides whitespace and comments."""
    body = re.sub(r"/\*.*?\*/", "", statement, flags=re.DOTALL)
    body = re.sub(r"--[^\n]*", "", body)
    return bool(body.strip())


def is_concurrent(statement: str) -> bool:
    """Pure: statements that must run outside a transaction (…CONCURRENTLY)."""
    return _CONCURRENT_RE.match(_strip_leading_comments(statement)) is not None


def _strip_leading_comments(statement: str) -> str:
    return re.sub(r"^(\s*(--[^\n]*\n|/\*.*?\*/))*", "", statement, flags=re.DOTALL)


_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK)\b\s*(WORK|TRANSACTION)?\s*$",
    re.IGNORECASE,
)


def batches(statements: Iterable[str]) -> list[tuple[bool, list[str]]]:
    """Pure: consecutive ordinary statements together (one transaction), concurrent alone.

    BEGIN / COMMIT written in a file are dropped: the runner owns the transactions.
    """
    out: list[tuple[bool, list[str]]] = []
    for stmt in statements:
        if _TRANSACTION_CONTROL.match(_strip_leading_comments(stmt)):
            continue
        if is_concurrent(stmt):
            out.append((True, [stmt]))
        elif out and not out[-1][0]:
            out[-1][1].append(stmt)
        else:
            out.append((False, [stmt]))
    return out


def _index_state(conn: psycopg.Connection[Any], name: str) -> bool | None:
    """None: no such index; True/False: it exists and is (not) valid."""
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)
    ).fetchone()
    return None if row is None else bool(row[0])


def _run_concurrent(conn: psycopg.Connection[Any], statement: str) -> None:
    """One CONCURRENTLY statement, outside a transaction, only if the catalog needs it."""
    bare = _strip_leading_comments(statement)
    create = _CREATE_CONCURRENT_RE.match(bare)
    if create:
        state = _index_state(conn, create.group(1))
        if state is True:
            return  # already there and valid: no lock at all
        if state is False:  # left invalid by an interrupted build: rebuild it
            conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{create.group(1)}"'.encode())
    drop = _DROP_CONCURRENT_RE.match(bare)
    if drop and _index_state(conn, drop.group(1)) is None:
        return
    conn.execute(statement.encode())


def _apply_file(conn: psycopg.Connection[Any], f: SqlFile, lock_timeout_ms: int) -> None:
    for concurrent, statements in batches(split_statements(f.text)):
        if concurrent:
            _run_concurrent(conn, statements[0])
            continue
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}".encode())
            for stmt in statements:
                conn.execute(stmt.encode())  # no parameters: sent as a simple query
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {MIGRATIONS_TABLE} (name, checksum) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
            (f.name, f.checksum),
        )


def _take_migration_lock(conn: psycopg.Connection[Any], wait_s: float = 600.0) -> None:
    """Serialize concurrent migrations on a session advisory lock.

    Polled with pg_try_advisory_lock, not waited for: a session blocked in
    pg_advisory_lock is an open transaction, and the other migration's CREATE INDEX
    CONCURRENTLY waits for every open transaction: a deadlock.
    """
    deadline = time.monotonic() + wait_s
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,)).fetchone()
        if row and row[0]:
            return
        if time.monotonic() > deadline:
            raise TransientError(f"another migration held the lock for {wait_s:g} s")
        time.sleep(0.2)


def apply_schema(dsn: str, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> list[str]:
    """Bring one database's queue schema up to date; the names of the files applied."""
    if is_transaction_pooler(dsn):
        raise PermanentError(
            "migrations need a session: this database URL is a transaction-mode pooler "
            "(port 6543); use the direct connection or the session pooler (port 5432)"
        )
    check_dsn(dsn)
    applied_now: list[str] = []
    try:
        with psycopg.connect(libpq_dsn(dsn), connect_timeout=10, autocommit=True) as conn:
            _take_migration_lock(conn)
            conn.execute(f"SET lock_timeout = {int(lock_timeout_ms)}".encode())
            if conn.execute(f"SELECT to_regclass('{MIGRATIONS_TABLE}')").fetchone() == (None,):
                with conn.transaction():
                    conn.execute(_MIGRATIONS_DDL.encode())
            recorded: dict[str, str] = {
                str(name): str(checksum)
                for name, checksum in conn.execute(
                    f"SELECT name, checksum FROM {MIGRATIONS_TABLE}"
                ).fetchall()
            }
            files = sql_files()
            for name in changed_after_applied(files, recorded):
                log_event(
                    "queue.migration_changed",
                    "a versioned migration changed after it was applied; not re-applied "
                    "(add a new NNN_*.sql file instead)",
                    level="WARNING",
                    file=name,
                )
            for f in pending(files, recorded):
                _apply_file(conn, f, lock_timeout_ms)
                applied_now.append(f.name)
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    except psycopg.OperationalError as exc:
        if exc.sqlstate == "55P03":
            raise TransientError(
                f"schema migration waited more than {lock_timeout_ms} ms for a lock "
                "(a long transaction holds the table); nothing half-done, run it again later"
            ) from exc
        raise TransientError(
            f"database unreachable while migrating: {safe_db_error(exc, dsn)}"
        ) from exc
    except psycopg.Error as exc:
        raise PermanentError(
            f"schema migration failed: {exc.sqlstate}: {safe_db_error(exc, dsn)}"
        ) from exc
    return applied_now


def migrate(settings: Settings) -> list[MigrationReport]:
    """Apply the schema to every environment that has a *_DATABASE_URL, then check security."""
    done: list[MigrationReport] = []
    for env in settings.environments:
        if env.database_url is None:
            log_event("queue.migrate_skipped", "no database URL", environment=env.name)
            continue
        dsn = env.database_url.get_secret_value()
        try:
            check_dsn(dsn, f"{env.name.upper()}_DATABASE_URL")
            applied = apply_schema(dsn)
            statements = check_security(dsn)
        except (TransientError, PermanentError) as exc:
            raise type(exc)(f"{env.name}: {exc}") from exc
        log_event(
            "queue.migrated",
            "schema up to date",
            environment=env.name,
            applied=",".join(applied) or "none",
        )
        for stmt in statements:
            log_event(
                "queue.security_warning",
                f"table open to Supabase API roles; run: {stmt}",
                level="WARNING",
                environment=env.name,
            )
        done.append(MigrationReport(env.name, applied, statements))
    return done
