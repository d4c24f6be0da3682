"""Sliding-window quota bookkeeping for the emulator (time is passed in: pure and testable).

Two views of the same traffic:
- `admit`: Gemini's enforcement: RPM and input TPM over the last window; over-limit
  calls are refused (the server answers 429) and do not count.
- `WindowPeak`: the busiest window ever seen, over every call offered (refused or
  not), so a test can prove a client pool never asked for more than the quota.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why a call was refused and when enough of the window frees up."""

    dimension: str  # "requests" or "tokens"
    limit: int
    retry_after_s: float


class WindowPeak:
    """The maximum requests and tokens seen within any window-long span."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self.max_requests = 0
        self.max_tokens = 0

    def record(self, now: float, tokens: int) -> None:
        """Add one call; a window ending at a call is where a maximum can occur."""
        self._evict(now)
        self._events.append((now, tokens))
        self._tokens += tokens
        self.max_requests = max(self.max_requests, len(self._events))
        self.max_tokens = max(self.max_tokens, self._tokens)

    def _evict(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._tokens -= self._events.popleft()[1]


class QuotaWindows:
    """Gemini's per-minute limits, enforced on a sliding log."""

    def __init__(self, rpm_limit: int, tpm_limit: int, window_s: float) -> None:
        self.rpm_limit = rpm_limit
        self.tpm_limit = tpm_limit
        self.window_s = window_s
        self._admitted: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def usage(self, now: float) -> tuple[int, int]:
        """(requests, tokens) admitted in the window ending now."""
        self._evict(now)
        return len(self._admitted), self._tokens

    def admit(self, now: float, tokens: int) -> Refusal | None:
        """Admit a call of `tokens` input tokens at `now`, or say why not."""
        self._evict(now)
        if self.rpm_limit and len(self._admitted) + 1 > self.rpm_limit:
            oldest = self._admitted[0][0]
            return Refusal("requests", self.rpm_limit, _ceil_tenth(oldest + self.window_s - now))
        if self.tpm_limit and self._tokens + tokens > self.tpm_limit:
            return Refusal("tokens", self.tpm_limit, self._token_wait(now, tokens))
        self._admitted.append((now, tokens))
        self._tokens += tokens
        return None

    def _token_wait(self, now: float, tokens: int) -> float:
        """Seconds until enough admitted tokens leave the window for `tokens` more."""
        excess = self._tokens + tokens - self.tpm_limit
        freed = 0
        for at, spent in self._admitted:
            freed += spent
            if freed >= excess:
                return _ceil_tenth(at + self.window_s - now)
        # Larger than the whole limit: Google still says "retry later".
        return _ceil_tenth(self.window_s)

    def _evict(self, now: float) -> None:
        while self._admitted and self._admitted[0][0] <= now - self.window_s:
            self._tokens -= self._admitted.popleft()[1]


def _ceil_tenth(seconds: float) -> float:
    return max(0.1, math.ceil(seconds * 10) / 10)
