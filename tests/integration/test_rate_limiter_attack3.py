"""Attack reproductions against the shared Gemini limiter (issue 13 review, round 4: after the
fixes that moved the state to gemini:limiter:state, handle a loss once, and scan the oldest 32
grants for the token hint).

Each test reproduced one defect with a real Redis and failed on the code as reviewed (its
docstring says what went wrong); it holds now.
"""

from __future__ import annotations

import functools
import time

import pytest
import redis

from control_plane.keys import Keys
from control_plane.rate_limiter import peak_window_load
from tests.support.limiter import make_limiter, previous_acquire

pytestmark = pytest.mark.integration

RPM = 100
WINDOW_MS = 2_000
make = functools.partial(make_limiter, rpm_limit=RPM)


def losses(client: redis.Redis, keys: Keys) -> int:
    return int(client.hget(keys.stats, "state_losses") or 0)


def test_a_middle_window_is_kept_when_the_longest_window_record_lapses(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The state records one (win, win_until): the longest window a recent caller counts over.
    A caller with a window shorter than the recorded one leaves the record as it is, so its own
    need (its grant + its window) is not recorded anywhere. When the longer record lapses, a
    caller with an even shorter window takes over the record and prunes over *its* window: the
    middle caller's grant is removed while it still counts in the middle caller's window. That
    caller then sees fewer grants than its window holds (over-admission) and, on its next call,
    finds its newest grant missing: a false 'state lost' pause for the whole pool. Three window
    settings at once happen in a rolling config change of GEMINI_RATE_MARGIN_MS.
    """
    long = make(redis_client, keys, window_ms=3_000)
    middle = make(redis_client, keys, window_ms=2_000)
    short = make(redis_client, keys, window_ms=1_000)
    assert long.try_acquire(1).granted  # record: 3 s until t=3.0
    time.sleep(1.5)
    kept = middle.try_acquire(1)  # t=1.5: counts in middle's window until t=3.5
    assert kept.granted
    time.sleep(1.6)  # t=3.1: the 3 s record has lapsed
    assert short.try_acquire(1).granted  # record: 1 s; prunes at or before t=2.1
    in_log = redis_client.zscore(keys.limiter_log, f"{kept.grant_id}:1")
    decision = middle.try_acquire(1)  # t=3.1+: kept (t=1.5) is still inside middle's 2 s window
    assert in_log is not None and not decision.state_lost and losses(redis_client, keys) == 0, (
        f"middle's grant still in its window was pruned (in log: {in_log is not None}); "
        f"middle's next call: lost={decision.state_lost} reason={decision.reason}; "
        f"state_losses={losses(redis_client, keys)}"
    )


def test_a_429_cooldown_does_not_make_instances_count_the_same_loss(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """'One pause and one count per loss': later detections change nothing only while the
    cooldown's *reason* is the loss reason. A Gemini 429 is the likeliest thing to happen right
    after a loss (the lost grants still count at Gemini), and limiter_cooldown overwrites the
    reason when it extends the cooldown. Every instance whose newest grant was lost then counts
    the loss again as 'first': state_losses = number of instances, each redoing the O(n)
    log_sum + cum_rebuild, and each may push the pause to its own now + window.
    """
    workers = [make(redis_client, keys) for _ in range(4)]
    for w in workers:
        assert w.try_acquire(1).granted
    redis_client.delete(keys.limiter_log, keys.limiter_cum)  # the log lost (eviction/rollback)
    first = workers[0].try_acquire(1)
    assert first.state_lost and first.reason == "cooldown"
    workers[0].cooldown(WINDOW_MS / 1000 * 2, "429 RESOURCE_EXHAUSTED")  # Gemini: 429
    for w in workers[1:]:
        w.try_acquire(1)
    assert losses(redis_client, keys) == 1, (
        f"one loss counted {losses(redis_client, keys)} times (each a first detection)"
    )


def test_a_429_before_the_detection_does_not_let_a_loss_extend_the_pause(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """Same root cause, other order: a 429 cooldown longer than one window already runs when the
    first instance finds the loss. Its pause (now + window) ends earlier, so neither the
    cooldown nor its reason is touched: the reason stays '429'. Every later instance that finds
    its newest grant missing is then a 'first' detection: it counts the loss again, redoes the
    O(n) recount and pushes the pause to *its* now + window, past both the 429 and the first
    detection's pause: the pause repeats once per instance.
    """
    workers = [make(redis_client, keys) for _ in range(3)]
    for w in workers:
        assert w.try_acquire(1).granted
    workers[0].cooldown(WINDOW_MS / 1000 * 1.3, "429 RESOURCE_EXHAUSTED")
    cooldown_429_end = int(redis_client.get(keys.cooldown_until) or 0)
    redis_client.delete(keys.limiter_log, keys.limiter_cum)
    first = workers[0].try_acquire(1)
    assert first.state_lost
    time.sleep(WINDOW_MS / 1000 * 0.6)
    workers[1].try_acquire(1)
    workers[2].try_acquire(1)
    end = int(redis_client.get(keys.cooldown_until) or 0)
    pause_end = max(first.server_ms + WINDOW_MS, cooldown_429_end)  # whichever ends later
    assert losses(redis_client, keys) == 1 and end <= pause_end + 50, (
        f"state_losses={losses(redis_client, keys)}; the pause ends {end - pause_end} ms after "
        f"the first detection's now + window (or the 429's end)"
    )


def test_a_loss_pauses_for_the_longest_window_once(redis_client: redis.Redis, keys: Keys) -> None:
    """A loss pauses for the *detecting* caller's window, although the state (when it survived)
    records a longer window others count over. A process with the longer window whose newest
    grant was lost is then still inside that window when the pause ends: it detects the loss a
    second time, counts it again and pauses everyone for another window. Meanwhile the short
    pause let the pool admit while the lost grants still counted in the longer window.
    """
    long = make(redis_client, keys, window_ms=4_000)
    short = make(redis_client, keys, window_ms=1_000)
    assert long.try_acquire(1).granted  # state: win 4 s
    assert short.try_acquire(1).granted
    redis_client.delete(keys.limiter_log, keys.limiter_cum)  # the log evicted; the state kept
    first = short.try_acquire(1)
    assert first.state_lost
    time.sleep(first.retry_after_ms / 1000 + 0.1)  # the detector's pause has ended
    assert short.try_acquire(1).granted  # admitting again: the lost grants still count for 4 s
    again = long.try_acquire(1)  # its newest grant (lost) is still inside its 4 s window
    assert first.retry_after_ms >= 3_500 and losses(redis_client, keys) == 1, (
        f"pause {first.retry_after_ms} ms, but lost grants count over 4 s windows; then the "
        f"long-window instance: lost={again.state_lost}, pause {again.retry_after_ms} ms, "
        f"state_losses={losses(redis_client, keys)}"
    )


def test_token_hint_is_never_late_when_the_room_is_made_past_the_scanned_grants(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The exact settled-token hint only looks at the oldest 32 grants; past them the ratio
    lookup in cum is used, which (per the doc) is 'exact when the estimates are off by one
    factor, else an early hint'. With 40 old grants under-estimated (est 1, actual 300) and one
    newer grant over-estimated (est 7000, actual 1), the room is made by the 34th old grant, but
    the ratio (7040 estimated / 12001 settled) maps the need onto the newer grant: the hint is
    late by the gap between them (here ~1.5 s of a 4 s window; a waiter at the head of the queue
    sleeps that long, and its reservation holds newcomers back too).
    """
    window_ms = 4_000
    limiter = make(redis_client, keys, tpm_limit=20_000, window_ms=window_ms)
    old = []
    for _ in range(40):
        grant = limiter.try_acquire(1).grant
        assert grant is not None
        limiter.settle(grant, 300)
        old.append(grant)
    time.sleep(1.5)
    big = limiter.try_acquire(7_000).grant
    assert big is not None
    limiter.settle(big, 1)
    denied = limiter.try_acquire(17_999)  # fits once 34 old grants (10200 tokens) have left
    assert not denied.granted and denied.reason == "tpm", denied
    fits_in_ms = (old[33].granted_at_us + window_ms * 1000) // 1000 - denied.server_ms
    assert denied.retry_after_ms <= fits_in_ms + 50, (
        f"hint {denied.retry_after_ms} ms, but the request fits in {fits_in_ms} ms"
    )


def test_a_settle_past_the_settlers_window_counts_while_a_longer_window_does(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """limiter_settle ignores a grant older than *the settler's* window ('it no longer counts
    anywhere'), but the log keeps it, with its estimate, for the longest window a recent caller
    counts over (the state's record). A short-window process whose Gemini call outlasts its
    window (a large document) settles est 10 -> actual 900 as a no-op: the long-window process
    still counts 10 for it and admits 500 more, 1401 real tokens in its window against TPM 1000.
    """
    tpm = 1_000
    long = make(redis_client, keys, tpm_limit=tpm, window_ms=3_000)
    short = make(redis_client, keys, tpm_limit=tpm, window_ms=1_000)
    first = long.try_acquire(1).grant  # the state now records the 3 s window
    assert first is not None
    slow = short.try_acquire(10).grant
    assert slow is not None
    time.sleep(1.2)  # the Gemini call took longer than the short process's window
    short.settle(slow, 900)
    members = redis_client.zrange(keys.limiter_log, 0, -1)
    more = long.try_acquire(500)
    events = [(first.granted_at_us, 1), (slow.granted_at_us, 900)]
    if more.granted:
        events.append((more.granted_at_us, 500))
    _, peak = peak_window_load(events, 3_000 * 1000)
    assert peak <= tpm, (
        f"{peak} real tokens in one 3 s window against TPM {tpm}: the settle was dropped "
        f"(log: {members}), the long window counted {more.window_tokens - 500} before admitting"
    )


def test_the_counter_evicted_alone_after_an_idle_window_is_rebuilt_without_a_pause(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """The counter and the state both outlive the log by a day. After a quiet spell longer
    than a window the log has expired; an LRU eviction then takes the least recently used key,
    which is the counter (the state may survive). The next call finds 'the counter missing with
    an empty log' and declares a loss: a whole-window pause for everyone, although the state key
    (which a flush or restart would have taken too) shows nothing was rolled back and no grant
    can still count anywhere (the state's newest grant is out of the window).
    """
    limiter = make(redis_client, keys)
    assert limiter.try_acquire(1).granted
    time.sleep(WINDOW_MS / 1000 + 0.2)  # idle: the newest grant is out of the window
    redis_client.delete(keys.limiter_seq)  # evicted alone; gemini:limiter:state is still there
    assert redis_client.get(keys.limiter_state) is not None
    decision = limiter.try_acquire(1)
    assert decision.granted and not decision.state_lost, decision


def test_rolling_upgrade_an_old_format_cum_member_keeps_the_token_hint_on_time(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """During a rolling upgrade the previous version still adds cum members 'gid:µs:est'. The
    new cum_parts only reads '<16-digit µs>:gid:µs:est' (it wants digits up to the first ':'),
    so when such a member is cum's newest, retry_hint gives up (last_est nil) whenever the
    oldest 32 grants do not make the room, and the caller gets the newest grant's expiry: a
    whole window, although the room appears much earlier (estimates exact here: ratio 1).
    """
    window_ms = 4_000
    tpm = 10_000
    new = make(redis_client, keys, tpm_limit=tpm, window_ms=window_ms)
    grants = []
    for _ in range(40):
        grant = new.try_acquire(100).grant
        assert grant is not None
        grants.append(grant)
    time.sleep(1.5)
    # an old process's grant
    reply, _ = previous_acquire(redis_client, keys, 1, rpm=RPM, tpm=tpm, window_ms=window_ms)
    assert reply[0] == "1", reply
    denied = new.try_acquire(9_499)  # 4001 in the window: fits once 35 grants have left
    assert not denied.granted and denied.reason == "tpm", denied
    fits_in_ms = (grants[34].granted_at_us + window_ms * 1000) // 1000 - denied.server_ms
    assert denied.retry_after_ms <= fits_in_ms + 50, (
        f"hint {denied.retry_after_ms} ms, but the request fits in {fits_in_ms} ms"
    )
