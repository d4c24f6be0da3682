"""The shared Gemini rate limiter: requests and input tokens per window, on Redis time.

Every admission is one Lua call (`lua/limiter_acquire.lua`, with its helpers
`lua/limiter_lib_*.lua`: the window, the state check, the queue, the retry hint) that checks
both windows at once against an exact sliding log: a zset of "grant id:tokens" -> admission time
in µs from Redis `TIME`. The window's request count is the log's size; its settled token sum is
kept incrementally in the limiter's state string (`gemini:limiter:state`, written with the log
by the same scripts: a grant adds, pruning and settling adjust). The two contract keys
(`gemini:rpm:current`, `gemini:tpm:current`) are mirrors for `redis-cli GET`, never read as the
truth: one that does not hold what the state says (an outside write, a lost key, or a grant or
settle by an earlier version of this code during a rolling upgrade, which updates only them)
makes the sum be recounted from the log once, and is rewritten; their writes never fail a call.
Every caller counts grants over the longest window a recent caller uses (recorded in the state
until that caller's last grant has left it), so a process configured with a shorter window
never prunes grants the others still count.
Requests in the last window + 1 must stay within RPM and tokens in the last window + the estimate
within TPM. A denial carries the server's `retry_after_ms`: when enough of the log expires for
this request to fit.

Bounded cost: every call is O(log n + log w) in Redis for a log of n grants and w waiters, plus
small constants: pruning takes at most 256 expired grants per call (each grant leaves once), the
queue is read only in its first `reserved_waiters` entries, and the token retry hint is one
lookup in a second zset (`gemini:limiter:cum`) that indexes the same grants by running token
total (the hint converts settled tokens to estimates at the window's ratio). Only damage (a lost
state or index) costs a one-off O(n) rebuild.

The acquire command is packed once per limiter (EVALSHA, sha, keys, settings) and sent on a
pooled connection; any connection error, timeout or NOSCRIPT sends the same call again through
redis-py's ordinary path (its retry policy, script reload), which the grant id makes idempotent.

No starvation (reservations): an `acquire` that is denied joins a FIFO queue in Redis
(`gemini:limiter:waiting`, ordered by first denial) with the tokens it needs, and keeps that
place for the whole call, however long it waits (`on_wait` lets a caller do its housekeeping
every `wait_slice_s` without leaving the queue). The first `reserved_waiters` (default 64) hold
room: each must leave room only for the waiters ahead of it, anyone else (a newcomer,
`try_acquire`, a waiter further back) for all of them. A 40%-of-TPM request therefore stops
small newcomers from eating the headroom it waits for, and is admitted as soon as the tokens
ahead of it expire. A reservation lapses `reserve_grace_ms` after the waiter's next expected
retry, so a waiter that died blocks others only briefly; one that gives up withdraws it at once.

Lost or rolled-back state: every grant increments the counter in `gemini:limiter:seq`, which only
grows (its format is the one earlier versions read), and records itself in the state as the newest
grant; each limiter instance remembers the highest counter it saw (and the Redis time it saw it)
and its own newest grant. A call knows grants are missing (Redis restarted without persistence or
was flushed, the log was evicted, an older RDB/AOF snapshot was restored, or a failover promoted a
lagging replica) when a grant that must still be in the window is not in the log (its caller's
newest, or the newest the state records), or the counter is lower than its caller saw less than
half a day ago (half of `LIMITER_EPOCH_TTL_MS`, which the counter always outlives), or it is
missing with an empty log. The grant check catches a rollback even after other instances have
granted the counter back up to (or past) what the caller saw. Those grants may still count at
Gemini for up to one window, so that call sets a shared cooldown of one whole window (the only
restart that cannot exceed the quota), for every `restart_fraction`, puts the counter above any
value anyone saw (Redis µs) and recounts the sum from the log; any instance that then finds a grant
of its own missing while that pause runs changes nothing (one pause, one count, one O(n) recount
per loss), and the caller forgets its newest grant. The counter lost alone (evicted, the log
intact) is rebuilt without a pause. What holds for a fresh process (no memory): it cannot tell
restored state from live state, nor a loss from a first start. With no state at all it opens a new
one and admits `restart_fraction` (default half) of each limit for one window (1 = the whole limit;
grants made before a loss may then still count: up to 1 + fraction of the quota in the worst case);
with a restored older state it (and any instance whose grants all survived) carries on as if it
were live, until any instance whose recent grant was lost makes its next call (in a busy pool,
within its next retry: every busy instance reconnects at once after a restart or failover) and
pauses everyone for a window. The counter lives at least half a day past the last call (a grant
rewrites it for a day, a denial renews it when less than half is left), so an idle night is never
taken for a loss; after more than half a day fully idle an instance acts as fresh.

Key names are unchanged and not hash-tagged: the script must write the two contract keys, whose
fixed names fall in different Redis Cluster slots, so no tag could put one call's keys in one
slot; the limiter needs a non-cluster Redis (or a cluster-mode-disabled managed Redis).

All keys expire: the log, cum and the two live keys more than one window after the last grant
(renewed together when less than window + margin/2 is left, not on every call), reservations
shortly after their last retry, the epoch with the restart period, the counter a day after the
last call, counters after a week.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from control_plane.errors import AcquireTimeoutError, RequestTooLargeError
from control_plane.keys import (
    LIMITER_EPOCH_TTL_MS,
    STATS_TTL_MS,
    WINDOW_TTL_MARGIN_MS,
    Keys,
)
from control_plane.logs import log_event
from control_plane.scripts import ScriptSet

if TYPE_CHECKING:
    from control_plane.config import Settings


class AcquireCancelledError(AcquireTimeoutError):
    """The caller's stop event was set while it waited for a grant (worker shutting down)."""


@dataclass(frozen=True)
class Grant:
    """An admitted request; pass it to `settle` with the actual token count."""

    grant_id: str
    tokens: int
    granted_at_ms: int
    granted_at_us: int = 0


@dataclass(frozen=True)
class Decision:
    """The outcome of one admission attempt."""

    granted: bool
    retry_after_ms: int
    grant_id: str | None
    reason: str  # ok | rpm | tpm | reserved | cooldown
    tokens: int = 0
    granted_at_us: int = 0
    window_requests: int = 0
    window_tokens: int = 0
    seq: int = 0  # the shared grant counter after the call
    server_ms: int = 0  # Redis time of the call
    state_lost: bool = False  # this call found the shared state lost or rolled back

    @property
    def grant(self) -> Grant | None:
        """The `Grant` to settle, when granted."""
        if not self.granted or self.grant_id is None:
            return None
        return Grant(self.grant_id, self.tokens, self.granted_at_us // 1000, self.granted_at_us)


def parse_decision(raw: str | bytes, grant_id: str, tokens: int) -> Decision:
    """The acquire script's reply ("granted retry reason at_us requests tokens [seq now_ms
    [lost]]")."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    granted, retry, reason, at_us, requests, used, *rest = text.split()
    seq, server_ms = (int(rest[0]), int(rest[1])) if len(rest) >= 2 else (0, 0)
    lost = len(rest) >= 3 and rest[2] == "1"
    return Decision(
        granted=granted == "1",
        retry_after_ms=int(retry),
        grant_id=grant_id if granted == "1" else None,
        reason=reason,
        tokens=tokens,
        granted_at_us=int(at_us),
        window_requests=int(requests),
        window_tokens=int(used),
        seq=seq,
        server_ms=server_ms,
        state_lost=lost,
    )


def _bulk(value: str) -> bytes:
    data = value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


# ARGV[1..7] of an acquire call: member, register flag, waited ms, seen seq, seen Redis ms, this
# limiter's newest grant ("id µs"), and whether the grant id may already be in the log (a resend
# after an unknown outcome).
PER_CALL_ARGS = 7


def pack_acquire(sha: str, keys: list[str], config: list[str]) -> tuple[bytes, bytes]:
    """RESP bytes of an acquire EVALSHA around its per-call arguments: (head, tail)."""
    count = 3 + len(keys) + PER_CALL_ARGS + len(config)
    head = b"*%d\r\n" % count + b"".join(_bulk(v) for v in ("EVALSHA", sha, str(len(keys)), *keys))
    return head, b"".join(_bulk(v) for v in config)


def pack_call(head: bytes, tail: bytes, *args: str) -> bytes:
    """The whole command: head, the PER_CALL_ARGS per-call arguments, tail."""
    if len(args) != PER_CALL_ARGS:
        raise ValueError(f"an acquire call takes {PER_CALL_ARGS} per-call arguments")
    return head + b"".join(_bulk(v) for v in args) + tail


def wait_seconds(retry_after_ms: int, jitter: float, max_jitter_ms: int) -> float:
    """Sleep before the next attempt: the server's hint plus jitter in [0, 1) scaled.

    Jitter is at most `max_jitter_ms` and at most a tenth of the hint, so short hints stay
    precise (utilization) while waiters woken by the same expiry do not stampede. Never 0.
    """
    hint = max(1, retry_after_ms)
    spread = min(float(max_jitter_ms), hint / 10)
    return (hint + jitter * spread) / 1000.0


def peak_window_load(events: list[tuple[int, int]], window_us: int) -> tuple[int, int]:
    """Largest (requests, tokens) over every sliding window (t - window, t] ending at an event.

    `events` are (admission time µs, tokens). Used by tests and the bench to audit limiters.
    """
    ordered = sorted(events)
    peak_req = peak_tok = 0
    start = 0
    tokens = 0
    for end, (at, weight) in enumerate(ordered):
        tokens += weight
        while ordered[start][0] <= at - window_us:
            tokens -= ordered[start][1]
            start += 1
        peak_req = max(peak_req, end - start + 1)
        peak_tok = max(peak_tok, tokens)
    return peak_req, peak_tok


class _Holder:
    """Lives as long as a thread's locals: its finalizer gives the thread's connection back."""


class GeminiRateLimiter:
    """One RPM + TPM budget shared by every worker through Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        rpm_limit: int,
        tpm_limit: int,
        window_ms: int = 60_000,
        keys: Keys = Keys(),  # noqa: B008 - Keys is a frozen dataclass, safe as a default
        restart_fraction: float = 0.5,
        reserve_grace_ms: int = 2_000,
        max_jitter_ms: int = 25,
        reserved_waiters: int = 64,
        state_life_ms: int = LIMITER_EPOCH_TTL_MS,
        rng: random.Random | None = None,
    ) -> None:
        if rpm_limit < 1 or tpm_limit < 1 or window_ms < 1:
            raise ValueError("rpm_limit, tpm_limit and window_ms must be positive")
        if not 0 < restart_fraction <= 1:
            raise ValueError("restart_fraction must be in (0, 1]")
        if not 1 <= reserved_waiters <= 1000:
            raise ValueError("reserved_waiters must be in [1, 1000]")
        self.rpm_limit = rpm_limit
        self.tpm_limit = tpm_limit
        self.window_ms = window_ms
        self.keys = keys
        self.restart_fraction = restart_fraction
        self.reserve_grace_ms = reserve_grace_ms
        self.max_jitter_ms = max_jitter_ms
        self._client = client
        self._scripts = ScriptSet(client)
        self._rng = rng or random.Random()
        # The acquire call is pre-packed once (EVALSHA, sha, keys, settings as RESP bytes): a call
        # only packs its own arguments and skips redis-py's per-command machinery.
        self._acquire_script = self._scripts.get("limiter_acquire")
        self._acquire_keys = [
            keys.limiter_log,
            keys.limiter_cum,
            keys.limiter_waiting,
            keys.limiter_waiting_until,
            keys.limiter_seq,
            keys.limiter_epoch,
            keys.cooldown_until,
            keys.cooldown_reason,
            keys.rpm_current,
            keys.tpm_current,
            keys.stats,
            keys.limiter_state,
        ]
        self._acquire_config = [
            str(v)
            for v in (
                rpm_limit,
                tpm_limit,
                window_ms,
                WINDOW_TTL_MARGIN_MS,
                repr(restart_fraction),
                reserve_grace_ms,
                state_life_ms,
                STATS_TTL_MS,
                reserved_waiters,
            )
        ]
        # The highest grant counter this instance saw, and the Redis time of that reply: a lower
        # counter later means lost or rolled-back state (see the module doc).
        self._seen_lock = threading.Lock()
        self._seen_seq = 0
        self._seen_ms = 0
        # This instance's newest grant (id, admission µs): while it should still be in the window,
        # the script checks the log holds it (a rollback refilled by others keeps the counter).
        self._mine: tuple[str, int] = ("-", 0)
        self._packed_head, self._packed_tail = pack_acquire(
            self._acquire_script.sha, self._acquire_keys, self._acquire_config
        )
        # A single-connection client serialises its commands itself: use the ordinary path there.
        self._packed_ok = getattr(client, "connection", None) is None
        # The fast path keeps one pooled connection per thread (taking it from the pool and
        # giving it back at every call costs more than the script itself); a forked child takes
        # its own.
        self._local = threading.local()

    @classmethod
    def from_settings(
        cls, client: redis.Redis, settings: Settings, keys: Keys
    ) -> GeminiRateLimiter:
        """The limiter configured by GEMINI_RPM_LIMIT / GEMINI_TPM_LIMIT / GEMINI_RATE_WINDOW_MS.

        A grant counts for the window plus GEMINI_RATE_MARGIN_MS: Gemini measures its window
        when requests arrive, and requests granted a window apart may arrive closer together
        (network, GIL, a busy host). Any transit jitter under the margin stays inside the quota.
        """
        return cls(
            client,
            rpm_limit=settings.gemini_rpm_limit,
            tpm_limit=settings.gemini_tpm_limit,
            window_ms=settings.gemini_rate_window_ms + settings.gemini_rate_margin_ms,
            keys=keys,
        )

    # --- admission ---
    def try_acquire(self, tokens: int) -> Decision:
        """One admission attempt; never waits, never queues a reservation."""
        self._check_size(tokens)
        return self._attempt(tokens, os.urandom(12).hex(), register=False, waited_ms=0)

    def acquire(
        self,
        tokens: int,
        timeout: float | None = None,
        *,
        stop_event: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
        wait_slice_s: float = 30.0,
    ) -> Grant:
        """Wait (server hints + jitter) until granted, keeping one FIFO place the whole time.

        `on_wait` is called about every `wait_slice_s` while the call waits (renew a lease, look
        at a long cooldown); whatever it raises ends the wait. Raises `RequestTooLargeError` at
        once if `tokens` exceeds the TPM limit, `AcquireTimeoutError` after `timeout` seconds,
        `AcquireCancelledError` once `stop_event` is set. However the call ends without a grant,
        its reservation is withdrawn.
        """
        self._check_size(tokens)
        grant_id = os.urandom(12).hex()
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        next_tick = started + wait_slice_s
        queued = False
        try:
            while True:
                waited_ms = int((time.monotonic() - started) * 1000)
                decision = self._attempt(tokens, grant_id, register=True, waited_ms=waited_ms)
                grant = decision.grant
                if grant is not None:
                    return grant
                queued = True
                delay = wait_seconds(
                    decision.retry_after_ms, self._rng.random(), self.max_jitter_ms
                )
                now = time.monotonic()
                if deadline is not None:
                    if deadline - now <= 0:
                        self._count("timeouts", "acquire_timeout", grant_id)
                        raise AcquireTimeoutError(
                            f"no Gemini capacity for {tokens} tokens within {timeout:g}s "
                            f"(last denial: {decision.reason}, "
                            f"retry in {decision.retry_after_ms} ms)"
                        )
                    delay = min(delay, deadline - now)  # one last attempt right at the deadline
                if on_wait is not None:
                    if now >= next_tick:
                        on_wait()
                        next_tick = time.monotonic() + wait_slice_s
                    delay = min(delay, max(0.001, next_tick - now))
                if stop_event is None:
                    time.sleep(delay)
                elif stop_event.wait(delay):
                    self._count("cancelleds", "acquire_cancelled", grant_id)
                    raise AcquireCancelledError("stopped while waiting for Gemini capacity")
        except BaseException:
            if queued:
                self._withdraw(grant_id, tokens)
            raise

    def _check_size(self, tokens: int) -> None:
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        if tokens > self.tpm_limit:
            raise RequestTooLargeError(
                f"request needs {tokens} input tokens, more than the whole per-window budget "
                f"GEMINI_TPM_LIMIT={self.tpm_limit}: split the document"
            )

    def _attempt(self, tokens: int, grant_id: str, *, register: bool, waited_ms: int) -> Decision:
        member = f"{grant_id}:{tokens}"
        with self._seen_lock:
            seen = (str(self._seen_seq), str(self._seen_ms), f"{self._mine[0]} {self._mine[1]}")
        args = (member, "1" if register else "0", str(waited_ms), *seen)
        raw = None
        if self._packed_ok:
            # Every earlier send of this id had a definite answer (a denial), or fell back to the
            # path below, which looks the id up: this one needs no lookup.
            raw = self._run_packed(pack_call(self._packed_head, self._packed_tail, *args, "0"))
        if raw is None:
            # The ordinary path: NOSCRIPT reload and the client's retry policy. Rerunning after a
            # failed fast attempt is safe: the script looks the grant id up first (idempotent).
            raw = self._acquire_script(
                keys=self._acquire_keys, args=[*args, "1", *self._acquire_config]
            )
        decision = parse_decision(raw, grant_id, tokens)
        with self._seen_lock:
            if decision.seq >= self._seen_seq:
                self._seen_seq, self._seen_ms = decision.seq, decision.server_ms
            if decision.state_lost:
                self._mine = ("-", 0)  # counted once: the shared pause covers it
            elif decision.granted and decision.granted_at_us > self._mine[1]:
                self._mine = (grant_id, decision.granted_at_us)
        return decision

    def _run_packed(self, packed: bytes) -> str | bytes | None:
        """Send a pre-packed EVALSHA on this thread's connection; None when the caller must fall
        back to the ordinary path."""
        local = self._local
        conn = getattr(local, "conn", None)
        try:
            if conn is None or local.pid != os.getpid():
                pool = self._client.connection_pool
                conn = pool.get_connection()  # may fail while Redis restarts
                local.conn, local.pid, local.holder = conn, os.getpid(), _Holder()
                # Back to the pool when the thread ends (its locals are dropped).
                weakref.finalize(local.holder, pool.release, conn)
            conn.send_packed_command([packed])  # reconnects if needed
            return conn.read_response()  # type: ignore[no-any-return]
        except redis.exceptions.NoScriptError:
            return None  # script cache flushed: redis-py's Script reloads it
        except (redis.ConnectionError, redis.TimeoutError):
            if conn is not None:
                conn.disconnect()  # a reply may be in flight
            return None

    def _withdraw(self, grant_id: str, tokens: int) -> None:
        """Withdraw a reservation so nobody keeps leaving room for us (best effort: it lapses
        `reserve_grace_ms` after our last retry anyway, e.g. when Redis is unreachable)."""
        try:
            self._scripts.run(
                "limiter_cancel",
                [self.keys.limiter_waiting, self.keys.limiter_waiting_until],
                [f"{grant_id}:{tokens}", grant_id],
            )
        except (redis.RedisError, OSError) as exc:
            log_event(
                "acquire_withdraw_failed", "reservation left to lapse", error=type(exc).__name__
            )

    def _count(self, field: str, event: str, grant_id: str) -> None:
        """Count a wait that ended without a grant, and log it."""
        try:
            self._client.hincrby(self.keys.stats, field, 1)
        except (redis.RedisError, OSError):
            pass  # a counter is not worth hiding why the wait ended
        log_event(event, "gave up waiting for Gemini capacity", grant_id=grant_id)

    # --- accounting ---
    def settle(self, grant: Grant, actual_tokens: int) -> None:
        """Replace the grant's estimate with the actual count; idempotent, harmless once expired."""
        if actual_tokens < 0:
            raise ValueError("actual_tokens must be >= 0")
        self._scripts.run(
            "limiter_settle",
            [self.keys.limiter_log, self.keys.tpm_current, self.keys.limiter_state],
            [grant.grant_id, grant.tokens, grant.granted_at_us, actual_tokens, self.window_ms],
        )

    def cooldown(self, seconds: float, reason: str = "") -> None:
        """Pause every worker for `seconds` (a 429); never shortens a longer cooldown."""
        duration_ms = max(1, int(seconds * 1000))
        _, extended = self._scripts.run(
            "limiter_cooldown",
            [self.keys.cooldown_until, self.keys.cooldown_reason, self.keys.stats],
            [duration_ms, reason, STATS_TTL_MS],
        )
        if int(extended):
            log_event("gemini.cooldown", "all workers pause", seconds=seconds, reason=reason)

    def _status(self) -> tuple[int, int, int, int]:
        count, tokens, remaining, age = self._scripts.run(
            "limiter_status",
            [
                self.keys.limiter_log,
                self.keys.limiter_cum,
                self.keys.rpm_current,
                self.keys.tpm_current,
                self.keys.cooldown_until,
                self.keys.limiter_state,
            ],
            [self.window_ms, WINDOW_TTL_MARGIN_MS],
        )
        return int(count), int(tokens), int(remaining), int(age)

    def cooldown_remaining_ms(self) -> int:
        """Milliseconds (Redis time) until the shared cooldown ends; 0 when none."""
        return self._status()[2]

    def usage(self) -> tuple[int, int]:
        """(requests, tokens) in the current window; refreshes gemini:rpm:current / tpm:current."""
        count, tokens, _, _ = self._status()
        return count, tokens

    def window_usage(self) -> tuple[int, int, int, int]:
        """(requests, tokens, ms since the window's oldest grant, cooldown ms left), in one call:
        the span is how much time the counts cover (the whole window once grants have gone on
        that long; 0 when empty)."""
        count, tokens, remaining, age = self._status()
        return count, tokens, min(age, self.window_ms), remaining

    def stats(self) -> dict[str, int]:
        """Counters: grants, denials, denied_<reason>, waits, wait_ms_total, cooldowns, timeouts."""
        raw = self._client.hgetall(self.keys.stats)
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
