"""Per-job pauses after the queue database fails: exponential, capped, time passed in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobBackoff:
    """Which scheduler jobs are paused, and until when (monotonic seconds)."""

    base_s: float = 2.0
    cap_s: float = 30.0
    _failures: dict[str, int] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)

    def failed(self, job: str, now: float) -> float:
        """Record a failure of `job`; returns how long it now pauses."""
        failures = self._failures.get(job, 0)
        delay = min(self.cap_s, self.base_s * 2.0 ** min(failures, 16))
        self._failures[job] = failures + 1
        self._until[job] = now + delay
        return delay

    def succeeded(self, job: str) -> None:
        """The job reached the database again: its next failure starts from the base pause."""
        self._failures.pop(job, None)

    def paused(self, job: str, now: float) -> bool:
        return now < self._until.get(job, 0.0)
