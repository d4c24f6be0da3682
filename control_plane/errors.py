"""The project's exception types.

Callers decide what to do from the type alone: a `TransientError` is worth
retrying later, a `PermanentError` is not, a `ConfigError` stops the process.
"""

from __future__ import annotations


class OcrPoolError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(OcrPoolError):
    """Bad configuration: the process must stop with this one line."""


class TransientError(OcrPoolError):
    """Network, 5xx, serialization failure, outage: retry later."""


class PermanentError(OcrPoolError):
    """Retrying cannot help (bad document, bad request, missing row)."""


class LeaderFencedError(PermanentError):
    """A newer scheduler leader has taken over: this one's claim or reap was refused."""


class RequestTooLargeError(PermanentError):
    """A single request needs more tokens than the whole per-window budget."""


class AcquireTimeoutError(TransientError):
    """The limiter could not grant a request within the caller's timeout."""


# A job waits out a shared Gemini cooldown up to this long; a longer one (a per-day quota,
# hours until the reset) gives the document back and the scheduler stops claiming: held
# that long, a job would hit OCR_JOB_TIME_LIMIT_MS, its lease would lapse, and every lapse
# costs an attempt.
MAX_HELD_COOLDOWN_S = 300.0


class QuotaPausedError(AcquireTimeoutError):
    """Gemini is paused for longer than a job should wait (a per-day quota): give it back.

    An `AcquireTimeoutError`, so the job releases its document without counting an attempt.
    """


class DependencyPausedError(AcquireTimeoutError):
    """A dependency of the document (Gemini, its document host, Redis) is out or paused
    longer than a job should hold it: the document goes back to ready without counting
    an attempt, not before `retry_after_ms` (issue 11)."""

    def __init__(self, message: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms
