"""A document's bytes through its host's circuit breaker (issue 11).

A document server that does not answer is an outage, not a fault of the documents it
serves: after OUTAGE_FAILURES failures in a row (across the pool) the host's breaker opens
and its documents go back to ready with a not-before time (no attempt counted) while the
other hosts' documents (file://, another server) go on; one fetch per OCR_BREAKER_PROBE_MS
probes the host and its success resumes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from control_plane.breakers import OUTAGE_FAILURES, Policy, document_host
from control_plane.errors import DependencyPausedError, TransientError
from control_plane.logs import log_event
from control_plane.queue.http_fetch import HttpStatusError
from control_plane.queue.models import ClaimedDocument

if TYPE_CHECKING:
    from actors.runtime import WorkerRuntime

# Fetches of one document before it is treated as failed while its host still answers
# others (a shared outage opens the breaker well before).
FETCH_TRIES = OUTAGE_FAILURES


def fetch_through_breaker(rt: WorkerRuntime, doc: ClaimedDocument) -> bytes:
    """The document's bytes; DependencyPausedError while its host is out."""
    host = document_host(doc.storage_path, doc.environment)
    name = f"document_host:{host}"
    policy = Policy(OUTAGE_FAILURES, rt.settings.ocr_breaker_probe_ms)
    admitted = rt.breakers.admit(name, policy)
    if admitted.blocked:
        raise DependencyPausedError(
            f"document host {host} is out (breaker open); given back without counting an attempt",
            retry_after_ms=admitted.wait_ms,
        )
    delay = 0.5
    for tried in range(1, FETCH_TRIES + 1):
        try:
            data = rt.fetcher.fetch(doc)
        except HttpStatusError:
            # The host answered (a 404 of this document...): it is up. Its probe must
            # resume it for the other documents, not leave it paused another interval.
            _host_answered(rt, name, policy, host)
            raise
        except TransientError as exc:
            seen = rt.breakers.failure(name, policy, str(exc)[:200])
            if seen.transition == "opened":
                log_event(
                    "document_host.outage",
                    f"document host {host} failing across documents ({exc}); its documents "
                    "wait, one probe every "
                    f"{policy.probe_ms / 1000:g} s (OCR_BREAKER_PROBE_MS); no attempt counted",
                    level="WARNING",
                    host=host,
                )
            if seen.blocked:
                raise DependencyPausedError(
                    f"document host {host} is out ({exc}); given back without counting an attempt",
                    retry_after_ms=seen.wait_ms,
                ) from exc
            if tried == FETCH_TRIES or rt.stop_event.wait(delay):
                raise
            delay *= 2
            continue
        _host_answered(rt, name, policy, host)  # resets failures "in a row"
        return data
    raise AssertionError("unreachable")  # pragma: no cover


def _host_answered(rt: WorkerRuntime, name: str, policy: Policy, host: str) -> None:
    closed = rt.breakers.success(name, policy)
    if closed.transition == "closed":
        log_event(
            "document_host.resumed",
            f"document host {host} answers again; its documents resume",
            level="WARNING",
            host=host,
        )


__all__ = ["fetch_through_breaker"]
