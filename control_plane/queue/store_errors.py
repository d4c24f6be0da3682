"""Permanent store errors inside a job (issue 12; used by actors/job.py): the real cause.

A permanent error of the queue database in `start`, `complete` or `fail` (a legacy
column too short, a trigger of another component refusing the update, a permission
taken away) used to escape the job: the row stayed leased, was redone up to the limit
(paying Gemini each time) and ended as "lease expired", hiding the cause. Here:
- start refused: the document goes to ERREUR with "could not start: <cause>";
- result refused: ERREUR with "OCR done but the result could not be saved: <cause>";
- the failure itself refused (e.g. error_message too short for the text): recorded again
  with shorter messages (`fallback_messages`, pure); if even those are refused the cause
  is logged loudly and the lease lapses (the reaper counts the attempt, so a row the
  store refuses to update is not redone forever).
"""

from __future__ import annotations

from control_plane.errors import PermanentError, TransientError
from control_plane.logs import log_event
from control_plane.queue.models import FailOutcome
from control_plane.queue.store import QueueStore

SHORTER = (200, 40)


def fallback_messages(message: str) -> list[str]:
    """Pure: the message, then shorter versions of it (each one strictly shorter)."""
    out = [message]
    for limit in SHORTER:
        if len(out[-1]) > limit:
            out.append(message[: limit - 3].rstrip() + "...")
    return out


def record_failure(
    store: QueueStore,
    doc_id: int,
    lease_token: str,
    message: str,
    *,
    permanent: bool,
    max_attempts: int,
    ref: str,
    retry_after_ms: int = 0,
) -> FailOutcome:
    """`store.fail`, retried with shorter messages when the store refuses the text.

    TransientError propagates (the caller decides); when the store refuses even the
    shortest message, the cause is logged (job.fail_unrecordable) and PermanentError
    is raised.
    """
    last: PermanentError | None = None
    for text in fallback_messages(message):
        try:
            return store.fail(
                doc_id,
                lease_token,
                text,
                permanent=permanent,
                max_attempts=max_attempts,
                retry_after_ms=retry_after_ms,
            )
        except PermanentError as exc:
            last = exc
            log_event(
                "job.fail_refused",
                "the database refused the failure record; retrying with a shorter message",
                level="WARNING",
                document=ref,
                error=str(exc)[:300],
            )
    # Not released: a release gives the attempt back, and a row the store refuses to
    # update would then be redone (and paid for) forever. The lease lapses instead, the
    # reaper counts the attempt, and the cause is in this log line.
    log_event(
        "job.fail_unrecordable",
        "the database refuses to record this document's failure; its lease will lapse",
        level="ERROR",
        document=ref,
        error=str(last)[:300],
    )
    raise PermanentError(f"failure not recordable: {last}")


def end_on_store_error(
    store: QueueStore,
    doc_id: int,
    lease_token: str,
    what: str,
    exc: PermanentError,
    *,
    max_attempts: int,
    ref: str,
) -> str:
    """A permanent store error in start/complete: the document goes to ERREUR with the cause."""
    message = f"{what}: {' '.join(str(exc).split())}"
    try:
        outcome = record_failure(
            store, doc_id, lease_token, message, permanent=True, max_attempts=max_attempts, ref=ref
        )
    except (PermanentError, TransientError) as again:
        log_event(
            "job.store_error_unrecorded",
            f"{message}; not recorded either ({type(again).__name__})",
            level="ERROR",
            document=ref,
        )
        return "store_error_unrecorded"
    log_event("job.store_error", message, level="ERROR", document=ref, outcome=str(outcome))
    return f"store_error_{outcome}"
