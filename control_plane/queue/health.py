"""Which environments' databases answered lately: failures and recoveries, time passed in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EnvironmentHealth:
    """Per environment: when its database last failed, and when it answered again after."""

    _failed_at: dict[str, float] = field(default_factory=dict)
    _recovered_at: dict[str, float] = field(default_factory=dict)

    def failed(self, env: str, now: float) -> None:
        self._failed_at[env] = now

    def failed_since(self, env: str, since: float) -> bool:
        """True when `env` failed at or after `since` (same clock as `failed`)."""
        failed = self._failed_at.get(env)
        return failed is not None and failed >= since

    def reached(self, env: str, now: float) -> None:
        """A call succeeded: the first one after a failure marks the recovery."""
        failed = self._failed_at.get(env)
        recovered = self._recovered_at.get(env)
        if failed is not None and (recovered is None or recovered < failed):
            self._recovered_at[env] = now

    def unsettled(self, env: str, seconds: float, now: float) -> bool:
        """True while `env` fails, and for `seconds` after it answered again.

        Counted from the recovery, not from the last error: a caller backing off may not
        have tried (nor failed) for a long time before the database came back.
        """
        failed = self._failed_at.get(env)
        if failed is None:
            return False
        recovered = self._recovered_at.get(env)
        if recovered is None or recovered < failed:
            return True
        return now - recovered < seconds
