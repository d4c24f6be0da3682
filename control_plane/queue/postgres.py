"""`PostgresStore`: the queue over a direct PostgreSQL connection (psycopg 3 + pool).

Each call is one autocommit statement calling a SQL function, so a lost
connection never leaves a transaction open. After an outage broken connections
are dropped and the pool reconnects in the background; callers meanwhile get
`TransientError`.

Through a transaction-mode pooler (Supabase port 6543, or `?pool_mode=transaction`;
see `pooler.py`) nothing is kept in the session: no server-side prepared statements
(`prepare_threshold=None`) and the statement timeout is set per call with `SET LOCAL`
inside the call's own transaction. No message of this module carries the password:
a malformed URL is refused before libpq can quote it, and psycopg_pool's own log
records of this pool are scrubbed.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from control_plane.errors import LeaderFencedError, PermanentError, TransientError
from control_plane.queue import failures, rows
from control_plane.queue.models import (
    ClaimedDocument,
    Delivery,
    FailOutcome,
    QueueCounts,
    ReapResult,
)
from control_plane.queue.pooler import check_dsn, is_transaction_pooler, libpq_dsn, safe_db_error
from control_plane.queue.store import LEADER_FENCED_SQLSTATE, is_transient_sqlstate

_NOT_MIGRATED = {"42883", "42P01", "42703"}  # undefined function / table / column


class _ScrubPassword(logging.Filter):
    """Removes one DSN's password from psycopg_pool's log records (it logs libpq errors)."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = safe_db_error(message, self._dsn)
        if clean != " ".join(message.split()):
            record.msg, record.args = clean, None
        return True


class PostgresStore:
    """One environment's queue, through psycopg."""

    def __init__(
        self,
        environment: str,
        dsn: str,
        *,
        max_size: int = 8,
        connect_timeout_s: int = 3,
        pool_timeout_s: float = 5.0,
        statement_timeout_ms: int = 30_000,
    ) -> None:
        self.environment = environment
        self._statement_timeout_ms = statement_timeout_ms
        check_dsn(dsn, f"{environment.upper()}_DATABASE_URL")
        self._dsn = dsn
        self.transaction_pooler = is_transaction_pooler(dsn)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": connect_timeout_s,
            # A server that vanishes mid-query (network partition) cannot fire its own
            # statement_timeout: the socket gives up after ~20 s instead of hanging the
            # caller for the OS default of hours (issue 12: one environment must not hold
            # the feed).
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 2,
            "tcp_user_timeout": 20_000,
        }
        if self.transaction_pooler:
            kwargs["prepare_threshold"] = None  # no server-side prepared statements
        self._scrub = _ScrubPassword(dsn)
        logging.getLogger("psycopg.pool").addFilter(self._scrub)
        self._pool = ConnectionPool(
            libpq_dsn(dsn),
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=pool_timeout_s,
            # psycopg_pool doubles its reconnect delay without a cap until reconnect_timeout:
            # with a long timeout a 30 s outage left workers unconnected for half a minute
            # more (and a long one for many minutes). A short one makes it give up quickly
            # and try again on the next request, so it reconnects soon after the database.
            reconnect_timeout=5.0,
            kwargs=kwargs,
            configure=None if self.transaction_pooler else self._configure,
            name=f"ocr-queue-{environment}",
        )
        self._pool.open(wait=False)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # A hung query must not hold a worker thread forever.
        conn.execute(f"SET statement_timeout = {int(self._statement_timeout_ms)}")

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                if not self.transaction_pooler:
                    cur.execute(sql, params)
                    return cur.fetchall()
                with conn.transaction():  # session state would not survive the pooler
                    cur.execute(f"SET LOCAL statement_timeout = {int(self._statement_timeout_ms)}")
                    cur.execute(sql, params)
                    return cur.fetchall()
        except PoolTimeout as exc:
            raise TransientError(
                f"{self.environment}: database unavailable (no connection in the pool)"
            ) from exc
        except psycopg.Error as exc:
            code = exc.sqlstate
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not code:
                self._pool.check()  # drop the other broken connections now
                raise TransientError(
                    f"{self.environment}: database unreachable: {safe_db_error(exc, self._dsn)}"
                ) from exc
            primary = exc.diag.message_primary or str(exc)  # without LINE / HINT lines
            detail = f"{self.environment}: {code or 'error'}: {safe_db_error(primary, self._dsn)}"
            if code == LEADER_FENCED_SQLSTATE:
                raise LeaderFencedError(detail) from exc
            if code in _NOT_MIGRATED:
                detail += " (schema missing or outdated: run python scheduler.py migrate)"
            if is_transient_sqlstate(code):
                raise TransientError(detail) from exc
            raise PermanentError(detail) from exc

    def _scalar(self, sql: str, params: tuple[Any, ...]) -> Any:
        result = self._query(sql, params)
        return next(iter(result[0].values())) if result else None

    def claim(
        self,
        document_source: str,
        limit: int,
        worker_id: str,
        lease_ms: int,
        *,
        epoch: int | None = None,
    ) -> list[ClaimedDocument]:
        found = self._query(
            "SELECT id, document_source, storage_path, lease_token::text AS lease_token,"
            " lease_expires_at, attempts"
            " FROM ocr_claim(%s::text, %s::integer, %s::text, %s::integer, %s::bigint)",
            (document_source, limit, worker_id, lease_ms, epoch),
        )
        return [rows.claimed_document(self.environment, r) for r in found]

    def start(
        self, doc_id: int, lease_token: str, worker_id: str, lease_ms: int, max_attempts: int
    ) -> Delivery | None:
        return rows.delivery(
            self._query(
                "SELECT lease_token::text AS lease_token, attempts"
                " FROM ocr_start(%s::bigint, %s::uuid, %s::text, %s::integer, %s::integer)",
                (doc_id, lease_token, worker_id, lease_ms, max_attempts),
            )
        )

    def renew(self, doc_id: int, lease_token: str, lease_ms: int) -> bool:
        return bool(
            self._scalar(
                "SELECT ocr_renew(%s::bigint, %s::uuid, %s::integer)",
                (doc_id, lease_token, lease_ms),
            )
        )

    def complete(
        self, doc_id: int, lease_token: str, text: str, prompt_tokens: int, output_tokens: int
    ) -> bool:
        return bool(
            self._scalar(
                "SELECT ocr_complete(%s::bigint, %s::uuid, %s::text, %s::integer, %s::integer)",
                (doc_id, lease_token, rows.clean_text(text), prompt_tokens, output_tokens),
            )
        )

    def fail(
        self,
        doc_id: int,
        lease_token: str,
        message: str,
        *,
        permanent: bool,
        max_attempts: int,
        retry_after_ms: int = 0,
    ) -> FailOutcome:
        return rows.fail_outcome(
            self._scalar(
                "SELECT ocr_fail(%s::bigint, %s::uuid, %s::text, %s::boolean, %s::integer,"
                " %s::integer)",
                (
                    doc_id,
                    lease_token,
                    rows.clean_text(message),
                    permanent,
                    max_attempts,
                    int(retry_after_ms),
                ),
            )
        )

    def release(self, doc_id: int, lease_token: str, retry_after_ms: int = 0) -> bool:
        return bool(
            self._scalar(
                "SELECT ocr_release(%s::bigint, %s::uuid, %s::integer)",
                (doc_id, lease_token, int(retry_after_ms)),
            )
        )

    def reap(self, max_attempts: int, *, epoch: int | None = None) -> ReapResult:
        return rows.reap_result(
            self._query(
                "SELECT * FROM ocr_reap(%s::integer, 1000, %s::bigint)", (max_attempts, epoch)
            )
        )

    def leader_fence(self, epoch: int, owner: str) -> int:
        return int(self._scalar("SELECT ocr_leader_fence(%s::bigint, %s::text)", (epoch, owner)))

    def counts(self) -> dict[str, QueueCounts]:
        return rows.queue_counts(self._query("SELECT * FROM ocr_counts()", ()))

    def errors(self, samples: int = 5) -> list[failures.ErrorGroup]:
        """Documents in ERREUR grouped by type and reason (issue 14)."""
        found = self._query("SELECT * FROM ocr_errors(NULL, %s::integer)", (samples,))
        return failures.error_groups(self.environment, found)

    def requeue(
        self, selection: failures.RequeueFilter, *, apply: bool, requeued_by: str
    ) -> list[failures.RequeueRow]:
        """Documents in ERREUR back to ready (or, without `apply`, those that would go)."""
        found = self._query(
            "SELECT * FROM ocr_requeue(%s::text, %s::text, %s::bigint[], %s::boolean, %s::text)",
            (
                selection.document_source,
                selection.reason,
                list(selection.ids) if selection.ids else None,
                apply,
                requeued_by,
            ),
        )
        return failures.requeue_rows(self.environment, found)

    def close(self) -> None:
        self._pool.close()
        logging.getLogger("psycopg.pool").removeFilter(self._scrub)

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"PostgresStore({self.environment!r})"
