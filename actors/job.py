"""One OCR job: slot, fenced lease, fetch, chunk, OCR through the limiter, write back.

The order matters for "nothing lost, nothing written twice":
1. take a pool slot of the document's type (capacity checked atomically);
2. `start` the lease, fenced on its token: a stale message (lease reaped and
   re-claimed since it was enqueued, or a second delivery of a message another
   process already started) is dropped here. A start counts the attempt and gives
   this delivery its own token, which every later write carries;
3. fetch, inspect and split the PDF; OCR chunk by chunk through the limiter;
4. `complete` or `fail`, fenced on the token (a lost lease writes nothing);
5. release the slot, always.
What to do with an error is decided by `outcome_for_error`, a pure function.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from enum import StrEnum

import dramatiq
import redis
from dramatiq.middleware import TimeLimitExceeded

from actors.dependencies import fetch_through_breaker
from actors.runtime import ActiveJob, WorkerRuntime
from control_plane import observe
from control_plane.capacity import consuming_hosts, live_hosts, room_elsewhere
from control_plane.dispatch import DocumentMessage, enqueue_document
from control_plane.drain import JobStopped
from control_plane.errors import (
    AcquireTimeoutError,
    OcrPoolError,
    PermanentError,
    TransientError,
)
from control_plane.gemini.engine import OcrInterrupted, OcrResult
from control_plane.logs import log_event
from control_plane.pacing import record_job_seconds, wait_slot_freed, wake_slot_waiters
from control_plane.pool import SlotLease, SlotRefusal
from control_plane.queue.models import ClaimedDocument, FailOutcome
from control_plane.queue.pdf import inspect_pdf, split_pdf
from control_plane.queue.store_errors import end_on_store_error, record_failure
from control_plane.retry_timing import is_redis_outage, release_delay_ms, retry_delay_ms


class JobTimeLimitError(TransientError):
    """The job outlived OCR_JOB_TIME_LIMIT_MS (Dramatiq interrupted it): counts an attempt."""


class Outcome(StrEnum):
    """What happens to a document after an error."""

    FAIL_PERMANENT = "fail_permanent"  # status 4 at once, precise message
    FAIL_RETRY = "fail_retry"  # back to ready, counts an attempt (error after the max)
    RELEASE = "release"  # back to ready, no attempt counted (shutdown, our wait, an outage)


def outcome_for_error(exc: BaseException, *, stopping: bool) -> Outcome:
    """Pure: how an exception raised while processing a document is handled.

    An outage of Redis (the limiter, the slots) is not the document's fault: released.
    """
    if is_redis_outage(exc):
        return Outcome.RELEASE
    if isinstance(exc, AcquireTimeoutError | OcrInterrupted):
        return Outcome.RELEASE  # our own wait, or told to stop (slot/lease lost, drain)
    if isinstance(exc, PermanentError):
        return Outcome.FAIL_PERMANENT
    if stopping and isinstance(exc, TransientError):
        return Outcome.RELEASE
    return Outcome.FAIL_RETRY


def describe_error(exc: BaseException) -> str:
    """The error_message written to the row: precise, one line, bounded."""
    if is_redis_outage(exc):
        text = f"Redis unavailable ({type(exc).__name__}); not the document's fault"
    elif isinstance(exc, OcrPoolError):
        text = str(exc) or type(exc).__name__
    else:
        text = f"unexpected {type(exc).__name__}: {exc}"
    return " ".join(text.split())[:1000]


# How long a job waits for a slot of its type before giving the document back.
SLOT_WAIT_S = 60.0
# How long a job waits while ITS host is full before handing the message to a host with
# room (issue 10: a message must not wait on a full host while another host sits idle).
HOST_FULL_HAND_OFF_S = 0.5


def process_document(rt: WorkerRuntime, message: DocumentMessage) -> str:
    """Run one job; returns what happened (for logs and tests)."""
    worker_id = rt.worker_id()
    # Dramatiq's time limit counts from here; a pause must not hold the document past it
    # (its interruption counts an attempt): leave room for one Gemini call (attack a2).
    hold_until = (
        time.monotonic()
        + (rt.settings.ocr_job_time_limit_ms - rt.settings.gemini_timeout_ms - 1000) / 1000
    )
    why, delay_ms = "no slot of its type became free", 0
    try:
        waited = _wait_for_slot(rt, message, worker_id)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # an outage, not the document
        waited, why = None, describe_error(exc)
        delay_ms = rt.settings.ocr_retry_base_ms
    if isinstance(waited, _HandOff) and _hand_off(rt, message):
        return "handed_off"  # still enqueued: the feed keeps counting it
    slot = waited if isinstance(waited, SlotLease) else None
    # Only now does the message stop counting as "enqueued": while it waits for a slot
    # it is the feed's look-ahead, and the feed must not send more behind it.
    _quietly(lambda: rt.enqueued.remove(message.document_source, message.ref))
    if slot is None:
        if rt.stop_event.is_set():
            why, delay_ms = "worker stopping", 0
        _release(rt, message, why, retry_after_ms=delay_ms)
        return "released"
    job = ActiveJob(
        message.environment, message.id, message.lease_token, message.document_source, slot=slot
    )
    taken_at = time.monotonic()
    try:
        outcome = _run(rt, message, job, worker_id, hold_until)
        if outcome == "completed":  # slot time per type, for OCR_ALLOCATION_WEIGHTING=time
            _quietly(
                lambda: record_job_seconds(
                    rt.client, rt.keys, message.document_source, time.monotonic() - taken_at
                )
            )
        return outcome
    finally:
        rt.track(None)
        try:
            rt.pool.release_slot(slot)
            wake_slot_waiters(rt.client, rt.keys)
        except Exception as exc:  # any failure: the slot lapses by TTL anyway
            log_event(
                "job.slot_release_failed",
                "slot not released; it lapses by TTL",
                level="WARNING",
                slot=slot.slot_id,
                error=type(exc).__name__,
            )


def _count(rt: WorkerRuntime, outcome: str, message: DocumentMessage) -> None:
    """Shared document counters for status and metrics: completed:index, failed:acte, ...
    and per environment (issue 14) completed:dev:index, ..."""
    source, env = message.document_source, message.environment
    rt.client.hincrby(rt.keys.pool_stats, f"{outcome}:{source}", 1)
    rt.client.hincrby(rt.keys.pool_stats, f"{outcome}:{env}:{source}", 1)
    observe.document(env, source, outcome)


def _quietly(fn: Callable[[], None]) -> None:
    """Best-effort bookkeeping: a Redis hiccup here must not fail a finished document."""
    try:
        fn()
    except Exception as exc:  # any failure: bookkeeping is best effort
        log_event(
            "job.bookkeeping_failed",
            "bookkeeping not recorded",
            level="WARNING",
            error=type(exc).__name__,
        )


def _run(
    rt: WorkerRuntime,
    message: DocumentMessage,
    job: ActiveJob,
    worker_id: str,
    hold_until: float | None = None,
) -> str:
    store = rt.environments.store(message.environment)
    lease_ms = rt.settings.ocr_lease_ms
    if rt.stop_event.is_set():  # draining: a job not started yet gives its document back
        _release(rt, message, "worker stopping")
        return "released"
    rt.track(job)  # its slot is renewed from now on, even while the start waits on the database
    try:
        delivery = store.start(
            message.id, message.lease_token, worker_id, lease_ms, rt.settings.ocr_max_attempts
        )
    except TransientError as exc:
        log_event(
            "job.start_unavailable",
            "database unavailable at start; the lease will lapse and the document be retried",
            level="WARNING",
            document=message.ref,
            error=str(exc)[:200],
        )
        return "unstarted"
    except PermanentError as exc:  # issue 12: the real cause, not a lease expiry
        return end_on_store_error(
            store,
            message.id,
            message.lease_token,
            "could not start",
            exc,
            max_attempts=rt.settings.ocr_max_attempts,
            ref=message.ref,
        )
    if delivery is None:
        log_event(
            "job.stale",
            "claim no longer ours (reaped, or another delivery started it); message dropped",
            document=message.ref,
        )
        return "stale"
    # From here on every write carries this delivery's own token.
    message = dataclasses.replace(
        message, lease_token=delivery.lease_token, attempts=delivery.attempt
    )
    job.lease_token = delivery.lease_token
    job.lease_renewed_at = time.monotonic()
    job.started = True  # its lease is renewed from now on
    started = time.monotonic()
    log_event(
        "job.started",
        "OCR started",
        document=message.ref,
        document_source=message.document_source,
        attempt=message.attempts,
        slot=job.slot.slot_id if job.slot else None,
    )
    try:
        result = _ocr(rt, message, job, hold_until)
    except TimeLimitExceeded:
        limit_s = rt.settings.ocr_job_time_limit_ms / 1000
        return _handle_error(
            rt,
            message,
            JobTimeLimitError(f"job ran past OCR_JOB_TIME_LIMIT_MS ({limit_s:g} s); interrupted"),
        )
    except Exception as exc:  # every error ends in a decided outcome
        if isinstance(exc, OcrInterrupted) and job.abort_reason:
            exc = JobStopped(job.abort_reason)  # say why: slot/lease lost, drain
        return _handle_error(rt, message, exc)
    return _complete(rt, message, job, result, time.monotonic() - started)


def _ocr(
    rt: WorkerRuntime, message: DocumentMessage, job: ActiveJob, hold_until: float | None = None
) -> OcrResult:
    doc = ClaimedDocument(
        environment=message.environment,
        id=message.id,
        document_source=message.document_source,
        storage_path=message.storage_path,
        lease_token=message.lease_token,
        lease_expires_at=None,  # type: ignore[arg-type]
        attempts=message.attempts,
    )
    data = fetch_through_breaker(rt, doc)
    inspect_pdf(data, max_pages=rt.settings.ocr_max_pages)
    chunks = split_pdf(data, rt.settings.ocr_pages_per_chunk)
    # The job's own stop event: set when its slot or lease is lost, or when the drain
    # gives it back; `before_call` checks it (and the drain) before each Gemini call.
    return rt.engine.ocr_chunks(
        message.document_source,
        chunks,
        stop_event=job.abort,
        before_call=lambda: rt.before_call(job),
        hold_until=hold_until,
    )


def _complete(
    rt: WorkerRuntime, message: DocumentMessage, job: ActiveJob, result: OcrResult, elapsed: float
) -> str:
    """Write the text; hold it and retry while the database is unreachable."""
    store = rt.environments.store(message.environment)
    delay = 0.5
    # Hold the result for as long as the job may run, not just one lease: while the
    # database is down nobody can reap the lease, and the write is fenced on its token
    # (a lease reaped and re-claimed meanwhile makes it a no-op), so holding is safe,
    # and dropping would pay Gemini again for a result we have.
    deadline = time.monotonic() + max(
        rt.settings.ocr_lease_ms / 1000, rt.settings.ocr_job_time_limit_ms / 1000 - elapsed
    )
    while True:
        try:
            written = store.complete(
                message.id,
                message.lease_token,
                result.text,
                result.prompt_tokens,
                result.output_tokens,
            )
            break
        except PermanentError as exc:  # issue 12: e.g. a legacy column refuses the text
            return end_on_store_error(
                store,
                message.id,
                message.lease_token,
                "OCR done but the result could not be saved",
                exc,
                max_attempts=rt.settings.ocr_max_attempts,
                ref=message.ref,
            )
        except TransientError as exc:
            if time.monotonic() > deadline:
                log_event(
                    "job.result_dropped",
                    "database unreachable until the job time "
                    "limit; the document will be reclaimed and redone",
                    level="ERROR",
                    document=message.ref,
                    error=str(exc)[:200],
                )
                return "dropped"
            log_event(
                "job.complete_retry",
                f"database unavailable; result held, retry in {delay:.1f}s",
                level="WARNING",
                document=message.ref,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)  # a short cap: the write lands soon after the return
    if not written:
        log_event(
            "job.stale_result",
            "lease lost before completion; result not written",
            level="WARNING",
            document=message.ref,
        )
        return "stale"
    _quietly(lambda: _count(rt, "completed", message))
    log_event(
        "job.completed",
        "OCR complete",
        document=message.ref,
        document_source=message.document_source,
        pages=result.pages,
        calls=result.calls,
        prompt_tokens=result.prompt_tokens,
        output_tokens=result.output_tokens,
        seconds=round(elapsed, 3),
    )
    return "completed"


def _handle_error(rt: WorkerRuntime, message: DocumentMessage, exc: BaseException) -> str:
    stopping = rt.stop_event.is_set()
    outcome = outcome_for_error(exc, stopping=stopping)
    text = describe_error(exc)
    settings = rt.settings
    if outcome is Outcome.RELEASE:
        delay = release_delay_ms(
            exc,
            stopping=stopping,
            base_ms=settings.ocr_retry_base_ms,
            max_ms=settings.ocr_retry_max_ms,
        )
        _release(rt, message, text, retry_after_ms=delay)
        return outcome.value
    permanent = outcome is Outcome.FAIL_PERMANENT
    store = rt.environments.store(message.environment)
    try:
        result = record_failure(  # issue 12: shorter messages if the store refuses the text
            store,
            message.id,
            message.lease_token,
            text,
            permanent=permanent,
            max_attempts=settings.ocr_max_attempts,
            ref=message.ref,
            retry_after_ms=retry_delay_ms(
                message.attempts,
                base_ms=settings.ocr_retry_base_ms,
                max_ms=settings.ocr_retry_max_ms,
                rng=_RNG,
            ),
        )
    except PermanentError:
        return "fail_unrecordable"  # cause logged (job.fail_unrecordable); lease lapses
    except TransientError:
        log_event(
            "job.fail_unrecorded",
            "could not record the failure; the lease will lapse and the document be retried",
            level="WARNING",
            document=message.ref,
        )
        return "unrecorded"
    if result is FailOutcome.ERROR:
        _quietly(lambda: _count(rt, "failed", message))
    log_event(
        "job.failed",
        text,
        level="WARNING" if result is FailOutcome.RETRY else "ERROR",
        document=message.ref,
        outcome=str(result),
        permanent=permanent,
        attempt=message.attempts,
    )
    return f"fail_{result}"


_RNG = random.Random()


def _release(
    rt: WorkerRuntime, message: DocumentMessage, why: str, *, retry_after_ms: int = 0
) -> None:
    try:
        rt.environments.store(message.environment).release(
            message.id, message.lease_token, retry_after_ms
        )
        log_event(
            "job.released",
            f"document back to ready: {why}",
            document=message.ref,
            not_before_s=round(retry_after_ms / 1000, 1),
        )
    except OcrPoolError as exc:
        log_event(
            "job.release_failed",
            "could not release; the lease will lapse",
            level="WARNING",
            document=message.ref,
            error=type(exc).__name__,
        )


class _HandOff:
    """`_wait_for_slot`'s answer when this host is full and another host has room."""


HAND_OFF = _HandOff()


def _wait_for_slot(
    rt: WorkerRuntime, message: DocumentMessage, worker_id: str
) -> SlotLease | _HandOff | None:
    # Half the job time limit at most, so the wait always ends before Dramatiq's TimeLimit.
    deadline = time.monotonic() + min(SLOT_WAIT_S, rt.settings.ocr_job_time_limit_ms / 2000)
    delay = 0.05
    full_since: float | None = None
    while True:
        if rt.stop_event.is_set():  # draining: a job waiting for a slot gives it back at once
            return None
        taken = rt.pool.take_slot(message.document_source, worker_id, message.ref)
        if isinstance(taken, SlotLease):
            return taken
        assert isinstance(taken, SlotRefusal)
        if taken.reason == "capacity":  # a slot is free in the pool, but not room on this host
            full_since = full_since if full_since is not None else time.monotonic()
            if time.monotonic() - full_since >= HOST_FULL_HAND_OFF_S and _room_elsewhere(
                rt, message.document_source
            ):
                return HAND_OFF
        else:
            full_since = None
        if rt.stop_event.is_set() or time.monotonic() > deadline:
            log_event(
                "job.no_slot",
                f"no {message.document_source} slot ({taken.reason})",
                level="WARNING",
                document=message.ref,
            )
            return None
        # Woken by the next release anywhere in the pool; the timeout only bounds a
        # missed wake-up (and how long a stop request waits).
        wait_slot_freed(rt.client, rt.keys, message.document_source, delay)
        delay = min(delay * 2, 1.0)


def _room_elsewhere(rt: WorkerRuntime, mode: str) -> bool:
    try:
        consuming = consuming_hosts(rt.registry.all(), mode)  # only hosts that run this type
        hosts = [h for h in live_hosts(rt.client, rt.keys) if h.host in consuming]
        usage = rt.pool.usage_by_host()
    except Exception:  # Redis trouble: keep waiting here
        return False
    return room_elsewhere(hosts, usage, rt.host, rt.pool.costs[mode])


def _hand_off(rt: WorkerRuntime, message: DocumentMessage) -> bool:
    """Put the message back on its queue for a host with room; False if that failed."""
    try:
        enqueue_document(dramatiq.get_broker(), message)
    except Exception as exc:  # cannot requeue: the caller gives the document back
        log_event(
            "job.hand_off_failed",
            "could not requeue for another host",
            level="WARNING",
            document=message.ref,
            error=type(exc).__name__,
        )
        return False
    log_event(
        "job.handed_off",
        "this host is at its CPU/RAM budget; requeued for a host with room",
        document=message.ref,
        host=rt.host,
    )
    return True
