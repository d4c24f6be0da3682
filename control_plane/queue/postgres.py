"""`PostgresStore`: the queue over a direct PostgreSQL connection (psycopg 3 + pool).

Each call is one autocommit statement calling a SQL function, so a lost
connection never leaves a transaction open. After an outage broken connections
are dropped and the pool reconnects in the background; callers meanwhile get
`TransientError`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from control_plane.errors import PermanentError, TransientError
from control_plane.queue import rows
from control_plane.queue.models import ClaimedDocument, FailOutcome, QueueCounts, ReapResult
from control_plane.queue.store import is_transient_sqlstate


class PostgresStore:
    """One environment's queue, through psycopg."""

    def __init__(
        self,
        environment: str,
        dsn: str,
        *,
        max_size: int = 8,
        connect_timeout_s: int = 5,
        pool_timeout_s: float = 10.0,
        statement_timeout_ms: int = 30_000,
    ) -> None:
        self.environment = environment
        self._statement_timeout_ms = statement_timeout_ms
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=pool_timeout_s,
            # psycopg_pool doubles its reconnect delay without a cap until reconnect_timeout:
            # with a long timeout a 30 s outage left workers unconnected for half a minute
            # more (and a long one for many minutes). A short one makes it give up quickly
            # and try again on the next request, so it reconnects soon after the database.
            reconnect_timeout=5.0,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout_s},
            configure=self._configure,
            name=f"ocr-queue-{environment}",
        )
        self._pool.open(wait=False)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # A hung query must not hold a worker thread forever.
        conn.execute(f"SET statement_timeout = {int(self._statement_timeout_ms)}")

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
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
                raise TransientError(f"{self.environment}: database unreachable: {exc}") from exc
            detail = f"{self.environment}: {code or 'error'}: {str(exc).strip()}"
            if is_transient_sqlstate(code):
                raise TransientError(detail) from exc
            raise PermanentError(detail) from exc

    def _scalar(self, sql: str, params: tuple[Any, ...]) -> Any:
        result = self._query(sql, params)
        return next(iter(result[0].values())) if result else None

    def claim(
        self, document_source: str, limit: int, worker_id: str, lease_ms: int
    ) -> list[ClaimedDocument]:
        found = self._query(
            "SELECT id, document_source, storage_path, lease_token::text AS lease_token,"
            " lease_expires_at, attempts"
            " FROM ocr_claim(%s::text, %s::integer, %s::text, %s::integer)",
            (document_source, limit, worker_id, lease_ms),
        )
        return [rows.claimed_document(self.environment, r) for r in found]

    def start(self, doc_id: int, lease_token: str, worker_id: str, lease_ms: int) -> bool:
        return bool(
            self._scalar(
                "SELECT ocr_start(%s::bigint, %s::uuid, %s::text, %s::integer)",
                (doc_id, lease_token, worker_id, lease_ms),
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

    def reap(self, max_attempts: int) -> ReapResult:
        return rows.reap_result(self._query("SELECT * FROM ocr_reap(%s::integer)", (max_attempts,)))

    def counts(self) -> dict[str, QueueCounts]:
        return rows.queue_counts(self._query("SELECT * FROM ocr_counts()", ()))

    def close(self) -> None:
        self._pool.close()

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"PostgresStore({self.environment!r})"
