"""`SupabaseStore`: the queue over Supabase's REST API (supabase-py `.rpc`).

The same SQL functions as `PostgresStore`, called through PostgREST. The client
gets its own HTTP/1.1 `httpx.Client` with timeouts (supabase-py's default HTTP/2
sync client is not thread-safe). RPC POSTs are never retried by the client, so a
call either happened once or raised here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError
from supabase.lib.client_options import SyncClientOptions

from control_plane.errors import LeaderFencedError, PermanentError, TransientError
from control_plane.queue import failures, rows
from control_plane.queue.models import (
    ClaimedDocument,
    Delivery,
    FailOutcome,
    QueueCounts,
    ReapResult,
)
from control_plane.queue.store import LEADER_FENCED_SQLSTATE, is_transient_sqlstate
from supabase import Client, create_client


def make_supabase_client(
    url: str, service_key: str, *, timeout_s: float = 15.0, max_connections: int = 32
) -> tuple[Client, httpx.Client]:
    """A supabase-py client on an HTTP/1.1 httpx client with timeouts (returned to close)."""
    http = httpx.Client(
        http2=False,
        timeout=httpx.Timeout(timeout_s, connect=5.0),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        follow_redirects=False,  # issue 12: the apikey header must not follow a redirect
    )
    options = SyncClientOptions(
        httpx_client=http,
        postgrest_client_timeout=timeout_s,
        storage_client_timeout=int(timeout_s),
        auto_refresh_token=False,
        persist_session=False,
    )
    return create_client(url, service_key, options=options), http


def api_error(environment: str, what: str, exc: APIError) -> Exception:
    """A PostgREST error as TransientError or PermanentError (message without secrets)."""
    code = exc.code
    detail = f"{environment}: {what} failed: {code or 'error'}: {exc.message or ''}".rstrip(": ")
    if code == LEADER_FENCED_SQLSTATE:
        return LeaderFencedError(detail)
    if is_transient_sqlstate(code):
        return TransientError(detail)
    return PermanentError(detail)


def storage_error(environment: str, what: str, exc: StorageApiError) -> Exception:
    """A Storage API error: missing or forbidden objects are permanent, 5xx transient."""
    try:
        status = int(exc.status)
    except (TypeError, ValueError):
        status = 500
    detail = f"HTTP {status} fetching {what} from {environment} storage: {exc.message}"
    if status in (408, 429) or status >= 500:
        return TransientError(detail)
    return PermanentError(detail)


class SupabaseStore:
    """One environment's queue, through supabase-py."""

    def __init__(
        self,
        environment: str,
        url: str,
        service_key: str,
        *,
        timeout_s: float = 15.0,
    ) -> None:
        self.environment = environment
        self.url = url.rstrip("/")
        self._service_key = service_key
        self.client, self._http = make_supabase_client(url, service_key, timeout_s=timeout_s)

    def storage_request(self, bucket: str, path: str) -> tuple[str, dict[str, str]]:
        """URL and credential headers of an object (fetched by documents.py's guarded
        client, which sends the headers to this origin only)."""
        url = f"{self.url}/storage/v1/object/{quote(bucket, safe='')}/{quote(path)}"
        key = self._service_key
        return url, {"apikey": key, "Authorization": f"Bearer {key}"}

    def _rpc(self, fn: str, params: dict[str, Any]) -> Any:
        try:
            return self.client.rpc(fn, params).execute().data
        except APIError as exc:
            raise api_error(self.environment, fn, exc) from None
        except httpx.HTTPError as exc:  # network: refused, reset, timeout
            raise TransientError(
                f"{self.environment}: {fn} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def claim(
        self,
        document_source: str,
        limit: int,
        worker_id: str,
        lease_ms: int,
        *,
        epoch: int | None = None,
    ) -> list[ClaimedDocument]:
        found = self._rpc(
            "ocr_claim",
            {
                "p_document_source": document_source,
                "p_limit": limit,
                "p_worker_id": worker_id,
                "p_lease_ms": lease_ms,
                "p_epoch": epoch,
            },
        )
        return [rows.claimed_document(self.environment, r) for r in found or []]

    def start(
        self, doc_id: int, lease_token: str, worker_id: str, lease_ms: int, max_attempts: int
    ) -> Delivery | None:
        found = self._rpc(
            "ocr_start",
            {
                "p_id": doc_id,
                "p_lease_token": lease_token,
                "p_worker_id": worker_id,
                "p_lease_ms": lease_ms,
                "p_max_attempts": max_attempts,
            },
        )
        return rows.delivery(found or [])

    def renew(self, doc_id: int, lease_token: str, lease_ms: int) -> bool:
        return (
            self._rpc(
                "ocr_renew", {"p_id": doc_id, "p_lease_token": lease_token, "p_lease_ms": lease_ms}
            )
            is True
        )

    def complete(
        self, doc_id: int, lease_token: str, text: str, prompt_tokens: int, output_tokens: int
    ) -> bool:
        return (
            self._rpc(
                "ocr_complete",
                {
                    "p_id": doc_id,
                    "p_lease_token": lease_token,
                    "p_text": rows.clean_text(text),
                    "p_prompt_tokens": prompt_tokens,
                    "p_output_tokens": output_tokens,
                },
            )
            is True
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
            self._rpc(
                "ocr_fail",
                {
                    "p_id": doc_id,
                    "p_lease_token": lease_token,
                    "p_message": rows.clean_text(message),
                    "p_permanent": permanent,
                    "p_max_attempts": max_attempts,
                    "p_retry_after_ms": int(retry_after_ms),
                },
            )
        )

    def release(self, doc_id: int, lease_token: str, retry_after_ms: int = 0) -> bool:
        params = {"p_id": doc_id, "p_lease_token": lease_token, "p_retry_after_ms": retry_after_ms}
        return self._rpc("ocr_release", params) is True

    def reap(self, max_attempts: int, *, epoch: int | None = None) -> ReapResult:
        return rows.reap_result(
            self._rpc("ocr_reap", {"p_max_attempts": max_attempts, "p_epoch": epoch}) or []
        )

    def leader_fence(self, epoch: int, owner: str) -> int:
        return int(self._rpc("ocr_leader_fence", {"p_epoch": epoch, "p_owner": owner}))

    def counts(self) -> dict[str, QueueCounts]:
        return rows.queue_counts(self._rpc("ocr_counts", {}) or [])

    def errors(self, samples: int = 5) -> list[failures.ErrorGroup]:
        """Documents in ERREUR grouped by type and reason (issue 14)."""
        found = self._rpc("ocr_errors", {"p_document_source": None, "p_samples": samples})
        return failures.error_groups(self.environment, found or [])

    def requeue(
        self, selection: failures.RequeueFilter, *, apply: bool, requeued_by: str
    ) -> list[failures.RequeueRow]:
        """Documents in ERREUR back to ready (or, without `apply`, those that would go)."""
        found = self._rpc(
            "ocr_requeue",
            {
                "p_document_source": selection.document_source,
                "p_reason": selection.reason,
                "p_ids": list(selection.ids) if selection.ids else None,
                "p_apply": apply,
                "p_requeued_by": requeued_by,
            },
        )
        return failures.requeue_rows(self.environment, found or [])

    def download(self, bucket: str, path: str) -> bytes:
        """An object from this environment's Supabase Storage."""
        what = f"{bucket}/{path}"
        try:
            return bytes(self.client.storage.from_(bucket).download(path))
        except StorageApiError as exc:
            raise storage_error(self.environment, what, exc) from None
        except httpx.HTTPError as exc:
            raise TransientError(
                f"network error fetching {what} from {self.environment} storage: "
                f"{type(exc).__name__}"
            ) from exc

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never the key
        return f"SupabaseStore({self.environment!r})"
