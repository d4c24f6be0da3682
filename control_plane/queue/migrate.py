"""Apply the queue schema (`control_plane/sql/*.sql`) to every environment with a database URL.

The SQL is idempotent, so `python scheduler.py migrate` can run on every deploy.
Each database is migrated in one transaction under an advisory lock, so two
concurrent migrations wait for each other instead of colliding.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import psycopg

from control_plane.errors import PermanentError, TransientError
from control_plane.logs import log_event

if TYPE_CHECKING:
    from control_plane.config import Settings

# Arbitrary constant: the advisory lock key of schema migrations.
_MIGRATION_LOCK_KEY = 0x0C5_0001


def schema_files() -> list[tuple[str, str]]:
    """(file name, SQL text) of every shipped schema file, in order."""
    folder = resources.files("control_plane").joinpath("sql")
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    return [(e.name, e.read_text(encoding="utf-8")) for e in entries]


def apply_schema(dsn: str) -> None:
    """Create or update the queue schema in one database (idempotent)."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            for _name, text in schema_files():
                conn.execute(text.encode())  # no parameters: sent as one simple query
    except psycopg.OperationalError as exc:
        raise TransientError(f"database unreachable while migrating: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"schema migration failed: {exc.sqlstate}: {exc}") from exc


def migrate(settings: Settings) -> list[str]:
    """Apply the schema to every environment that has a *_DATABASE_URL; their names."""
    done: list[str] = []
    for env in settings.environments:
        if env.database_url is None:
            log_event("queue.migrate_skipped", "no database URL", environment=env.name)
            continue
        try:
            apply_schema(env.database_url.get_secret_value())
        except (TransientError, PermanentError) as exc:
            raise type(exc)(f"{env.name}: {exc}") from exc
        log_event(
            "queue.migrated", "schema applied", environment=env.name, files=len(schema_files())
        )
        done.append(env.name)
    return done
