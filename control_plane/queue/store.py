"""The `QueueStore` protocol and the mapping of database errors to the project's types.

Both transports raise only `TransientError` (retry later: network, outage, 5xx,
serialization failure, lock timeout) or `PermanentError` (retrying cannot help).
The classification is pure and shared, so both transports agree.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from control_plane.queue.models import (
    ClaimedDocument,
    Delivery,
    FailOutcome,
    QueueCounts,
    ReapResult,
)

# Raised by ocr_claim / ocr_reap for a leader epoch below the database's fence.
LEADER_FENCED_SQLSTATE = "OCR01"

# SQLSTATE classes / codes worth retrying (PostgreSQL appendix A).
_TRANSIENT_CLASSES = ("08", "53", "57P", "58")  # connection, resources, shutdown, system
_TRANSIENT_CODES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57014",  # query_canceled (statement_timeout)
    "55006",  # object_in_use
}
# PostgREST's own codes for "cannot reach the database" (PGRST000-003).
_TRANSIENT_POSTGREST = {"PGRST000", "PGRST001", "PGRST002", "PGRST003"}
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}


def is_transient_sqlstate(code: str | None) -> bool:
    """True when a SQLSTATE (or PostgREST/HTTP error code) is worth retrying.

    `None` means the server never answered (connection lost), which is transient.
    A bare three-digit code is an HTTP status (postgrest-py uses it when the body is
    not PostgREST JSON, e.g. a proxy's 502 page).
    """
    if code is None or code == "":
        return True
    if code.isdigit() and len(code) == 3:
        return int(code) in _TRANSIENT_HTTP or int(code) >= 500
    if code in _TRANSIENT_CODES or code in _TRANSIENT_POSTGREST:
        return True
    return code.startswith(_TRANSIENT_CLASSES)


@runtime_checkable
class QueueStore(Protocol):
    """One environment's queue. Writes are fenced on the lease token."""

    environment: str

    def claim(
        self,
        document_source: str,
        limit: int,
        worker_id: str,
        lease_ms: int,
        *,
        epoch: int | None = None,
    ) -> list[ClaimedDocument]:
        """Lease up to `limit` ready documents of a type, oldest first (no attempt counted).

        `epoch`: the scheduler leader's epoch; LeaderFencedError if a newer leader has
        fenced this database (None: unfenced, for tools and tests).
        """
        ...

    def start(
        self, doc_id: int, lease_token: str, worker_id: str, lease_ms: int, max_attempts: int
    ) -> Delivery | None:
        """Begin a delivery: count the attempt, get this delivery's own token.

        None = the claim's token is stale (reaped, or another delivery started first).
        """
        ...

    def renew(self, doc_id: int, lease_token: str, lease_ms: int) -> bool:
        """Extend the lease; False = lease lost."""
        ...

    def complete(
        self, doc_id: int, lease_token: str, text: str, prompt_tokens: int, output_tokens: int
    ) -> bool:
        """Write the result (status 5); False = lease lost, nothing written."""
        ...

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
        """Record a failed attempt: back to ready (not claimed again for `retry_after_ms`),
        or to error (permanent / out of attempts)."""
        ...

    def release(self, doc_id: int, lease_token: str, retry_after_ms: int = 0) -> bool:
        """Give the claim back without counting the attempt (not claimed again for
        `retry_after_ms`); False = lease lost."""
        ...

    def reap(self, max_attempts: int, *, epoch: int | None = None) -> ReapResult:
        """Move expired leases back to ready, or to error after `max_attempts` (fenced)."""
        ...

    def leader_fence(self, epoch: int, owner: str) -> int:
        """Announce a leader epoch; returns the highest this database has seen."""
        ...

    def counts(self) -> dict[str, QueueCounts]:
        """Ready and in-flight documents per `document_source`."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
