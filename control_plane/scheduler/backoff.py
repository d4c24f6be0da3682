"""Per-job pauses after the queue database fails: exponential, capped, time passed in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobBackoff:
    """Which scheduler jobs are paused, and until when (monotonic seconds)."""

    base_s: float = 2.0
    cap_s: float = 30.0
    last_error_at: float | None = None
    recovered_at: float | None = None  # first success after the last failure
    _failures: dict[str, int] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)

    def failed(self, job: str, now: float) -> float:
        """Record a failure of `job`; returns how long it now pauses."""
        failures = self._failures.get(job, 0)
        delay = min(self.cap_s, self.base_s * 2.0 ** min(failures, 16))
        self._failures[job] = failures + 1
        self._until[job] = now + delay
        self.last_error_at = now
        return delay

    def succeeded(self, job: str, now: float) -> None:
        """The job reached the database: its next failure starts from the base pause, and
        the first success of any job after an error marks the database as back."""
        self._failures.pop(job, None)
        if self.last_error_at is not None and (
            self.recovered_at is None or self.recovered_at < self.last_error_at
        ):
            self.recovered_at = now

    def paused(self, job: str, now: float) -> bool:
        return now < self._until.get(job, 0.0)

    def unsettled(self, seconds: float, now: float) -> bool:
        """True while the database fails, and for `seconds` after it was reached again.

        Counted from the recovery, not from the last error: a job backing off may not
        have tried (nor failed) for a long time before the database came back.
        """
        if self.last_error_at is None:
            return False
        if self.recovered_at is None or self.recovered_at < self.last_error_at:
            return True
        return now - self.recovered_at < seconds
