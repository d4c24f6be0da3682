"""Attack reproductions against the shared Gemini limiter (issue 13 review, round 3: after the
review fixes that moved the token sum into the limiter's state and judge losses by newest grants).

Each test reproduced one defect with a real Redis and failed on the code as reviewed (its
docstring says what went wrong); it holds now.
"""

from __future__ import annotations

import time

import pytest
import redis

from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter, peak_window_load
from tests.support.limiter import make_limiter as make
from tests.support.limiter import previous_acquire, previous_source

pytestmark = pytest.mark.integration

RPM = 20
WINDOW_MS = 2_000


def wipe(client: redis.Redis, keys: Keys) -> None:
    """Every key under the prefix gone: Redis restarted without persistence (or was flushed)."""
    for name in list(client.scan_iter(match=f"{keys.prefix}*")):
        client.delete(name)


def granted(limiter: GeminiRateLimiter, tries: int, tokens: int = 1) -> int:
    return sum(1 for _ in range(tries) if limiter.try_acquire(tokens).granted)


def test_one_loss_pauses_once_whatever_counter_each_instance_saw(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """A loss sets the counter back to what *the detecting caller* saw, not to a value above what
    any instance saw. Another live instance that saw a higher counter before the loss (it simply
    called a little later) finds `seen > counter` on its next call, within half a day, and
    declares a second loss: a second whole-window pause, after the first one has run its course
    and although nothing was lost since. In a pool every instance has its own seen value, so the
    pause repeats once per 'record' in the order the instances come back.
    """
    a = make(redis_client, keys)
    d = make(redis_client, keys)
    assert granted(a, 1) == 1  # a saw counter 1
    assert granted(d, 5) == 5  # d saw counter 6
    time.sleep(WINDOW_MS / 1000 + 0.1)  # both grants out of the window (no newest-grant check)
    wipe(redis_client, keys)  # Redis restarted without persistence
    first = a.try_acquire(1)
    assert first.state_lost and first.reason == "cooldown"  # the one pause a loss costs
    time.sleep(WINDOW_MS / 1000 + 0.1)  # that pause has ended
    assert granted(a, 2) == 2  # the pool is running again
    later = d.try_acquire(1)
    assert later.granted and not later.state_lost, (
        f"a second 'state lost' pause after the first one ended: {later}"
    )
    assert d.stats().get("state_losses", 0) == 1


def test_instances_whose_newest_grant_was_lost_do_not_extend_the_pause(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """After a loss every instance that still remembers a lost newest grant detects the loss
    again on its next call and pushes the shared cooldown to *its* now + window. All lost grants
    were made before the first detection, so the first detection's pause (now + window) already
    covers them; each later detection only lengthens the outage (up to ~2 windows here, and it
    also redoes the O(n) log_sum + cum_rebuild per instance). The module doc promises one pause
    per loss.
    """
    workers = [make(redis_client, keys) for _ in range(4)]
    for w in workers:
        assert granted(w, 1) == 1
    wipe(redis_client, keys)
    first = workers[0].try_acquire(1)
    assert first.state_lost
    pause_end = first.server_ms + first.retry_after_ms
    time.sleep(WINDOW_MS / 1000 * 0.6)
    for w in workers[1:]:
        w.try_acquire(1)
    end = redis_client.get(keys.cooldown_until)
    assert end is not None
    assert int(end) <= pause_end + 50, (
        f"the one-window pause was extended by {int(end) - pause_end} ms by later detections; "
        f"state_losses={workers[0].stats().get('state_losses')}"
    )


def test_a_mirror_holding_the_right_value_in_another_spelling_does_not_break_admission(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The mirrors are 'never read as truth: an outside write changes nothing'. But the script
    compares them with tonumber() and then INCRBYs them: a mirror holding the right value
    spelled '3.0' (or '0x3', ' 3', '3e0': an exporter or an operator writing a float) reads as
    equal, INCRBY fails with 'value is not an integer', and the script aborts half way: every
    grant raises from then on (an outage), and the aborted grant's log/cum ZADDs stay without the
    state (counter, running total, sum) that should go with them.
    """
    limiter = make(redis_client, keys)
    assert granted(limiter, 3, tokens=10) == 3
    assert redis_client.get(keys.rpm_current) == "3"
    redis_client.set(keys.rpm_current, "3.0", keepttl=True)  # the same value, spelled as a float
    try:
        decision = limiter.try_acquire(10)
    except redis.ResponseError as exc:
        log = redis_client.zcard(keys.limiter_log)
        state = redis_client.get(keys.limiter_state)
        pytest.fail(f"admission raised {exc!r}; log holds {log} grants, state is {state!r}")
    assert decision.granted


def test_token_sum_stays_the_logs_after_odd_mirror_writes(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """Consequence of the aborted grant above: its member (with its tokens) is in the log but
    its tokens were never added to the state's sum; when it is pruned, its tokens are taken off
    the sum anyway. The settled sum is then lower than the log's, and the limiter admits more
    than TPM tokens in one window.
    """
    tpm = 100
    limiter = make(redis_client, keys, tpm_limit=tpm)
    assert limiter.try_acquire(40).granted
    redis_client.set(keys.rpm_current, "1.0", keepttl=True)
    second = limiter.try_acquire(40)  # used to abort half way: ZADDs kept, state not
    assert second.granted
    redis_client.set(keys.rpm_current, "x")  # another outside write
    events = [(second.granted_at_us, 40)]
    deadline = time.monotonic() + 2.5 * WINDOW_MS / 1000
    while time.monotonic() < deadline:
        d = limiter.try_acquire(30)
        if d.granted:
            events.append((d.granted_at_us, 30))
        time.sleep(0.01)
    # The phantom 40 was never returned, so Gemini never saw it: what counts is what the limiter
    # admits, at most TPM tokens in any window.
    _, peak_tokens = peak_window_load(events, WINDOW_MS * 1000)
    assert peak_tokens <= tpm, f"{peak_tokens} tokens admitted in one window against {tpm}"
    log_sum = sum(int(m.rsplit(":", 1)[1]) for m in redis_client.zrange(keys.limiter_log, 0, -1))
    state = redis_client.get(keys.limiter_state)
    assert state is not None
    state_sum = int(state.split()[0])
    assert state_sum == log_sum, f"state sum {state_sum} != log sum {log_sum} (state {state!r})"


def test_token_hint_is_on_time_when_estimates_are_off_by_different_factors(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The token retry hint converts the settled tokens that must leave into estimates at the
    window's average ratio, then looks them up by running estimate total. When the old grant
    under-estimated (est 1, actual 600) and the new one over-estimated (est 300, actual 1), the
    room appears when the old grant expires, but the hint points at the new grant's expiry: the
    waiter sleeps up to a whole window past the moment it fits (holding its reservation, so
    newcomers are held back too). The doc says a late hint is 'bounded by the expiry of the
    grants that make the room'.
    """
    window_ms = 4_000
    limiter = make(redis_client, keys, tpm_limit=1_000, window_ms=window_ms)
    old = limiter.try_acquire(1).grant
    assert old is not None
    limiter.settle(old, 600)
    time.sleep(window_ms / 1000 / 2)
    new = limiter.try_acquire(300).grant
    assert new is not None
    limiter.settle(new, 1)
    denied = limiter.try_acquire(500)  # window: 601 settled tokens; fits once `old` expires
    assert not denied.granted and denied.reason == "tpm"
    fits_in_ms = (old.granted_at_us + window_ms * 1000) // 1000 - denied.server_ms
    assert denied.retry_after_ms <= fits_in_ms + 50, (
        f"hint {denied.retry_after_ms} ms, but the request fits in {fits_in_ms} ms"
    )


def test_rolling_upgrade_previous_instances_read_the_counter_as_live(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The state string changed format ("grants total" -> "grants total sum last_id last_us")
    under the same key. A worker still running the previous version (a rolling deploy: old
    processes finish their jobs while new ones start) parses it with '^(%d+) (%d+)$', finds no
    counter, and since it saw one recently declares the state lost: a whole-window pause for
    everyone; it then writes the old format back with its own seen counter, so the new instances
    see the counter lower than they saw and pause again, and so on for as long as both versions
    run. Upgrade note or key rename needed (or a format both versions parse).
    """
    reply, _ = previous_acquire(redis_client, keys, 1)
    assert reply[0] == "1"
    seen = (int(reply[6]), int(reply[7]))
    new = make(redis_client, keys)
    assert new.try_acquire(1).granted  # writes the new format
    reply, _ = previous_acquire(redis_client, keys, 1, seen=seen)
    losses = int(redis_client.hget(keys.stats, "state_losses") or 0)
    assert reply[0] == "1" and losses == 0, (
        f"the previous version's next call: {reply}; state_losses={losses}; "
        f"{redis_client.get(keys.cooldown_reason)!r}"
    )


def test_rolling_upgrade_a_settle_by_the_previous_version_reaches_the_sum(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The previous settle script rewrites the log member and INCRBYs gemini:tpm:current, which
    the new code no longer reads (the sum lives in the state string). A grant made by an old
    process and settled by it after a new process wrote the new-format state (rolling deploy,
    the old process finishing its Gemini call) keeps its
    estimate in the sum while the log holds the actual count: estimate 10, actual 600 leaves the
    sum 590 low, and a new instance admits 600 more against TPM 1000. When the grant is pruned
    the 600 is taken off a sum that only held 10, so the sum stays 590 low after that too.
    """
    tpm = 1_000
    reply, gid = previous_acquire(redis_client, keys, 10, tpm=tpm)  # its call starts
    assert reply[0] == "1"
    new = make(redis_client, keys, tpm_limit=tpm)
    assert new.try_acquire(0).granted  # a new process: the state is now in the new format
    redis_client.eval(
        previous_source("limiter_settle"),
        2,
        keys.limiter_log,
        keys.tpm_current,
        gid,
        10,
        int(reply[3]),
        600,
        WINDOW_MS,
    )
    members = redis_client.zrange(keys.limiter_log, 0, -1)
    assert f"{gid}:600" in members
    decision = new.try_acquire(600)
    assert not decision.granted, (
        f"600 + 600 tokens admitted in one window against TPM {tpm}: new code saw "
        f"{decision.window_tokens - 600 if decision.granted else decision.window_tokens} tokens"
    )


def test_a_loss_costs_one_o_n_rebuild_not_one_per_instance(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """'Only damage costs a one-off O(n) rebuild': but every instance whose newest grant is
    missing detects the loss again and redoes log_sum + cum_rebuild over the whole log. A lagging
    replica promoted with a 10k-entry log that lacks the last grant of each of 50 workers blocks
    Redis (Dramatiq's broker too) ~40-70 ms per worker: seconds in all for one failover. Only
    the first detection should pay (and only it should count in state_losses).
    """

    def big() -> GeminiRateLimiter:
        return make(redis_client, keys, rpm_limit=100_000, window_ms=60_000)

    base = big()
    pipe_grants = sum(1 for _ in range(10_000) if base.try_acquire(5).granted)
    assert pipe_grants == 10_000
    workers = [big() for _ in range(50)]
    for w in workers:
        assert w.try_acquire(5).granted
    redis_client.zremrangebyrank(keys.limiter_log, -50, -1)  # the replica lacks the newest 50
    costs = []
    for i, w in enumerate(workers):
        started = time.perf_counter()
        decision = w.try_acquire(5)
        assert decision.reason == "cooldown" and (i > 0 or decision.state_lost)
        costs.append((time.perf_counter() - started) * 1000)
    later = sorted(costs[1:])
    losses = int(redis_client.hget(keys.stats, "state_losses") or 0)
    assert losses == 1 and later[len(later) // 2] < 5, (
        f"{losses} loss detections; later detections cost median {later[len(later) // 2]:.1f} ms,"
        f" total {sum(costs):.0f} ms of Redis time for one loss"
    )


def test_a_process_with_a_shorter_window_makes_nobody_see_a_loss(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The window is each caller's own setting (GEMINI_RATE_WINDOW_MS + GEMINI_RATE_MARGIN_MS,
    read by every process: workers, the scheduler's usage() poll, tools). A process with a
    shorter window prunes grants the others still count. Before the review fixes that only made
    the shorter process see less; now the state's newest grant and each instance's newest grant
    must be in the log while *the caller's* window says so: a margin lowered in a rolling config
    change, or a tool built with the bare window, makes the next worker call a 'state lost'
    pause for everyone, though nothing was lost.
    """
    worker = make(redis_client, keys)  # window 2 s
    monitor = make(redis_client, keys, window_ms=WINDOW_MS // 2)  # e.g. without the margin
    assert worker.try_acquire(1).granted
    time.sleep(WINDOW_MS / 1000 * 0.7)
    monitor.usage()  # prunes the grant: outside *its* window
    decision = worker.try_acquire(1)
    assert not decision.state_lost and decision.granted, decision
