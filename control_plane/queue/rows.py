"""Turning SQL function results into queue values (shared by both transports)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from control_plane.errors import PermanentError
from control_plane.queue.models import (
    ClaimedDocument,
    Delivery,
    FailOutcome,
    QueueCounts,
    ReapResult,
)


def claimed_document(environment: str, row: Mapping[str, Any]) -> ClaimedDocument:
    """A row of `ocr_claim` (psycopg dict or PostgREST JSON) as a `ClaimedDocument`."""
    expires = row["lease_expires_at"]
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    return ClaimedDocument(
        environment=environment,
        id=int(row["id"]),
        document_source=str(row["document_source"]),
        storage_path=str(row["storage_path"]),
        lease_token=str(row["lease_token"]),
        lease_expires_at=expires,
        attempts=int(row["attempts"] or 0),  # a legacy nullable column (issue 12)
    )


def delivery(rows: Sequence[Mapping[str, Any]]) -> Delivery | None:
    """The row of `ocr_start` (none: the claim's token is stale)."""
    if not rows or rows[0].get("lease_token") is None:
        return None
    return Delivery(str(rows[0]["lease_token"]), int(rows[0]["attempts"]))


def queue_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, QueueCounts]:
    """Rows of `ocr_counts` keyed by document_source."""
    return {
        str(r["document_source"]): QueueCounts(
            int(r["ready"]), int(r["in_flight"]), int(r.get("waiting_retry") or 0)
        )
        for r in rows
    }


def reap_result(rows: Sequence[Mapping[str, Any]]) -> ReapResult:
    """The single row of `ocr_reap`."""
    if not rows:
        return ReapResult()
    return ReapResult(int(rows[0]["requeued"] or 0), int(rows[0]["errored"] or 0))


def fail_outcome(value: Any) -> FailOutcome:
    """The text `ocr_fail` returns."""
    try:
        return FailOutcome(str(value))
    except ValueError:
        raise PermanentError(f"ocr_fail returned an unexpected value: {value!r}") from None


def clean_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters; OCR output occasionally does."""
    return text.replace("\x00", "")
