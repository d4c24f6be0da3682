"""Values the queue hands out: claimed documents, counts, reap and fail outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum


class Status(IntEnum):
    """`extraction_queue.status_id` (DESIGN.md section 6)."""

    EN_ATTENTE = 1  # waiting for download (not ours)
    EN_TRAITEMENT = 2  # claimed, leased
    COMPLETE = 3  # ready for OCR
    ERREUR = 4  # failed; error_message says why
    EXTRACTION_COMPLETE = 5  # OCR done


@dataclass(frozen=True)
class ClaimedDocument:
    """A leased document; every later write must carry its `lease_token`."""

    environment: str
    id: int
    document_source: str
    storage_path: str
    lease_token: str
    lease_expires_at: datetime
    attempts: int


@dataclass(frozen=True)
class Delivery:
    """A started delivery: its own token (fences every later write) and attempt number."""

    lease_token: str
    attempt: int


@dataclass(frozen=True)
class QueueCounts:
    """Ready (status 3) and in-flight (status 2) documents of one type.

    `waiting_retry`: the ready ones not due yet (sent back after a failure or an outage,
    claimed again after their `retry_not_before`); they count in `ready` too.
    """

    ready: int = 0
    in_flight: int = 0
    waiting_retry: int = 0

    def __add__(self, other: QueueCounts) -> QueueCounts:
        return QueueCounts(
            self.ready + other.ready,
            self.in_flight + other.in_flight,
            self.waiting_retry + other.waiting_retry,
        )


@dataclass(frozen=True)
class ReapResult:
    """Expired leases moved back to ready, and moved to error."""

    requeued: int = 0
    errored: int = 0


class FailOutcome(StrEnum):
    """What `fail` did: back to ready, to error, or nothing (lease lost)."""

    RETRY = "retry"
    ERROR = "error"
    STALE = "stale"
