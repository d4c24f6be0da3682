"""Which environments' databases answered lately: failures, back-off and recoveries (pure).

Time is passed in. Each environment is judged on its own (issue 12): a failure of one
puts only that one in back-off (exponential from `base_s`, capped at `cap_s`), during
which the feed, the reaper and the counts skip it without trying, so an unreachable or
broken environment costs the others nothing; when its back-off ends one probe decides
whether it is back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OK = "ok"
UNREACHABLE = "unreachable"  # transient: network, outage, timeouts
BROKEN = "broken"  # permanent: not migrated, key refused, permission denied...
CONNECTING = "connecting"  # first contact not answered yet


@dataclass(frozen=True)
class EnvironmentState:
    """What the status block shows for one environment."""

    name: str
    state: str = OK
    error: str = ""
    failures: int = 0  # consecutive
    retry_in_s: float = 0.0

    def describe(self) -> str:
        if self.state == OK:
            return f"{self.name} ok"
        if self.state == CONNECTING:
            return f"{self.name} CONNECTING ({self.error})"
        retry = f"; retry in {self.retry_in_s:.0f}s" if self.retry_in_s > 0 else "; retrying"
        return f"{self.name} {self.state.upper()} ({self.error}{retry})"


@dataclass
class EnvironmentHealth:
    """Per environment: failures, back-off, and when it answered again after failing."""

    base_s: float = 1.0
    cap_s: float = 60.0  # a broken environment (not migrated, key refused): retried inline
    # An unreachable one is probed off the callers' threads (one short connect), so it can
    # be probed often: recovery after an outage then costs seconds, not a long back-off.
    unreachable_cap_s: float = 5.0
    _failed_at: dict[str, float] = field(default_factory=dict)
    _recovered_at: dict[str, float] = field(default_factory=dict)
    _down_since: dict[str, float] = field(default_factory=dict)  # first failure of the streak
    _reached_at: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    _retry_at: dict[str, float] = field(default_factory=dict)
    _error: dict[str, tuple[str, str]] = field(default_factory=dict)  # state, message
    _probed: set[str] = field(default_factory=set)

    def failed(self, env: str, now: float, error: str = "", *, permanent: bool = False) -> float:
        """Record a failure; returns the back-off before the next try (seconds)."""
        if env not in self._failures:
            self._down_since[env] = now
        self._failed_at[env] = now
        failures = self._failures.get(env, 0) + 1
        self._failures[env] = failures
        cap = self.cap_s if permanent else min(self.cap_s, self.unreachable_cap_s)
        delay = min(cap, self.base_s * 2.0 ** min(failures - 1, 16))
        self._retry_at[env] = now + delay
        self._error[env] = (BROKEN if permanent else UNREACHABLE, error)
        self._probed.discard(env)
        return delay

    def probe_answered(self, env: str) -> None:
        """A background probe reached an unreachable environment: try it for real next."""
        if env in self._failures:
            self._probed.add(env)
            self._retry_at[env] = 0.0

    def decide(self, env: str, now: float) -> str:
        """'try' it now, 'skip' it (backing off), or 'probe' it in the background first.

        An unreachable environment is probed off the caller's thread (its connect timeout
        must not stall the others); a broken one answers fast, so it is retried inline.
        """
        if env not in self._failures:
            return "try"
        if now < self._retry_at.get(env, 0.0):
            return "skip"
        kind = self._error.get(env, (UNREACHABLE, ""))[0]
        if kind == BROKEN or env in self._probed:
            return "try"
        return "probe"

    def failed_since(self, env: str, since: float) -> bool:
        """True when `env` failed at or after `since` (same clock as `failed`)."""
        failed = self._failed_at.get(env)
        return failed is not None and failed >= since

    def healthy_since(self, env: str, since: float) -> bool:
        """True when `env` has answered before and nothing failed there since `since`.

        A job that had nothing to ask an environment still counts it as a success; one
        that skipped it (backing off, or first contact still pending) does not.
        """
        return (
            env in self._reached_at and not self.failed_since(env, since) and not self.failing(env)
        )

    def reached(self, env: str, now: float) -> None:
        """A call succeeded: the first one after a failure marks the recovery."""
        self._reached_at[env] = now
        failed = self._failed_at.get(env)
        recovered = self._recovered_at.get(env)
        if failed is not None and (recovered is None or recovered < failed):
            self._recovered_at[env] = now
        self._failures.pop(env, None)
        self._retry_at.pop(env, None)
        self._error.pop(env, None)
        self._probed.discard(env)

    def failing(self, env: str) -> bool:
        """True between a failure and the next success."""
        return env in self._failures

    def due(self, env: str, now: float) -> bool:
        """May `env` be tried now? (healthy, or its back-off has ended)."""
        return now >= self._retry_at.get(env, 0.0)

    def unsettled(
        self, env: str, seconds: float, now: float, *, after_outage_s: float | None = None
    ) -> bool:
        """True while `env` fails, and for `seconds` after it answered again.

        Counted from the recovery, not from the last error: a caller backing off may not
        have tried (nor failed) for a long time before the database came back.

        `after_outage_s`: settle only as long as the outage lasted (first failure to
        recovery) plus this, at most `seconds`. A live holder could not renew its lease
        only while the database was down, and renews (or writes its result) within a
        heartbeat of its return; a short blip must not hold every reap back for a whole
        lease, or blips more frequent than a lease would stop reaping for good.
        """
        failed = self._failed_at.get(env)
        if failed is None:
            return False
        recovered = self._recovered_at.get(env)
        if recovered is None or recovered < failed:
            return True
        required = seconds
        if after_outage_s is not None:
            outage = max(0.0, recovered - self._down_since.get(env, failed))
            required = min(seconds, outage + after_outage_s)
        return now - recovered < required

    def state(self, env: str, now: float) -> EnvironmentState:
        if env not in self._failures:
            return EnvironmentState(env)
        kind, error = self._error.get(env, (UNREACHABLE, ""))
        return EnvironmentState(
            env,
            kind,
            error,
            self._failures[env],
            max(0.0, self._retry_at.get(env, now) - now),
        )
