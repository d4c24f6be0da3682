"""Circuit breakers for the dependencies a document needs (issue 11): outages are not the
document's fault.

One breaker per dependency, shared by every worker on every host through Redis:
`gemini:<model>` (5xx, timeouts), `gemini:configuration` (key, project, location, model,
settings), `document_host:<host>` (the server of http(s) documents, `file` for file://,
`storage:<env>` for Supabase Storage). After `threshold` failures in a row the breaker
opens: nobody calls the dependency; every `probe_ms` one caller is let through as the
probe; its success closes the breaker for everyone. Documents hit by an open breaker wait
(a Gemini outage: the job holds its document and its slot) or go back to ready with a
not-before time (a dead document host: other hosts' documents go first), never with an
attempt counted.

`step` is the transition function (pure); `lua/breaker.lua` does the same atomically on
Redis time, and `tests/integration/test_breakers_redis.py` runs one table through both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from control_plane.scripts import ScriptSet

if TYPE_CHECKING:
    import redis

    from control_plane.keys import Keys

# Failures in a row (across every worker) that open an outage breaker. Below
# GEMINI_MAX_CALL_ATTEMPTS' default (4), so a pool of one thread opens it before the
# document gives up.
OUTAGE_FAILURES = 3
# A breaker's Redis state outlives its last change by this much.
BREAKER_TTL_MS = 86_400_000
CONFIGURATION = "gemini:configuration"
# Answers cut at GEMINI_MAX_OUTPUT_TOKENS where splitting cannot help (one page, or no
# text at all), across documents: the output budget is too small, a configuration matter.
OUTPUT_BUDGET = "gemini:output_budget"


class Verdict(StrEnum):
    CLOSED = "closed"  # call the dependency
    PROBE = "probe"  # call it: you are this interval's probe
    OPEN = "open"  # do not call it before wait_ms


@dataclass(frozen=True)
class Policy:
    """When a breaker opens, and how often it probes."""

    threshold: int
    probe_ms: int


@dataclass(frozen=True)
class State:
    failures: int = 0
    open: bool = False
    probe_at: int = 0  # Redis-time ms


@dataclass(frozen=True)
class Step:
    """What one admit / failure / success said."""

    verdict: Verdict
    wait_ms: int = 0
    transition: str = ""  # "opened" / "closed" to the one caller that changed the state
    failures: int = 0

    @property
    def blocked(self) -> bool:
        return self.verdict is Verdict.OPEN


def step(state: State, op: str, now_ms: int, policy: Policy) -> tuple[State, Step]:
    """The breaker's transition function (pure; lua/breaker.lua is its atomic twin)."""
    if op == "admit":
        if not state.open:
            return state, Step(Verdict.CLOSED, failures=state.failures)
        if now_ms >= state.probe_at:
            return replace(state, probe_at=now_ms + policy.probe_ms), Step(
                Verdict.PROBE, failures=state.failures
            )
        return state, Step(Verdict.OPEN, state.probe_at - now_ms, failures=state.failures)
    if op == "success":
        if state.open:
            return State(), Step(Verdict.CLOSED, transition="closed")
        return State(), Step(Verdict.CLOSED)
    if op != "failure":
        raise ValueError(f"unknown breaker op {op!r}")
    failures = state.failures + 1
    if state.open:
        return replace(state, failures=failures), Step(
            Verdict.OPEN, max(state.probe_at - now_ms, 0), failures=failures
        )
    if failures >= policy.threshold:
        opened = State(failures, True, now_ms + policy.probe_ms)
        return opened, Step(Verdict.OPEN, policy.probe_ms, "opened", failures)
    return replace(state, failures=failures), Step(Verdict.CLOSED, failures=failures)


def document_host(storage_path: str, environment: str) -> str:
    """The dependency a document's bytes come from (pure): its URL's host, `file` or
    the environment's storage."""
    path = storage_path.strip()
    scheme = urlsplit(path).scheme.lower() if "://" in path or path.startswith("file:") else ""
    if scheme in ("http", "https"):
        parts = urlsplit(path)
        host = (parts.hostname or "").lower()
        return f"{host}:{parts.port}" if parts.port else host
    if scheme == "file":
        return "file"
    return f"storage:{environment}"


class Breakers:
    """The shared breakers on one Redis (thin shell over lua/breaker.lua)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._keys = keys
        self._scripts = ScriptSet(client)
        self._client = client

    def _run(self, op: str, name: str, policy: Policy, reason: str = "") -> Step:
        verdict, wait_ms, transition, failures = self._scripts.run(
            "breaker",
            [self._keys.breaker(name), self._keys.breakers_open],
            [op, name, policy.threshold, policy.probe_ms, reason[:300], BREAKER_TTL_MS],
        )
        return Step(Verdict(_text(verdict)), int(wait_ms), _text(transition), int(failures))

    def admit(self, name: str, policy: Policy) -> Step:
        """May I call the dependency now?"""
        return self._run("admit", name, policy)

    def failure(self, name: str, policy: Policy, reason: str) -> Step:
        """The dependency failed me (not the document's fault)."""
        return self._run("failure", name, policy, reason)

    def success(self, name: str, policy: Policy) -> Step:
        """The dependency answered."""
        return self._run("success", name, policy)

    def open_breakers(self) -> dict[str, str]:
        """Open breakers -> why (for the status block)."""
        raw = self._client.hgetall(self._keys.breakers_open)
        return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
