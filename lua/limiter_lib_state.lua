-- limiter_lib_state: is the shared state the one this caller saw? Not a script: pasted into
-- limiter_acquire where it says `--! include limiter_lib_state`.
--
-- k.seq  gemini:limiter:seq: "grants tokens": grants ever admitted by this state (only grows)
--        and their estimated tokens (the running total the next cum entry starts at)
-- k.epoch  Redis-time ms the restart period ends (set only for that period)
-- k.cool / k.reason / k.stats  the shared cooldown, its reason, the counters
-- c: config and flags (window_ms, fraction, life_ms; cool_until and restart_end are updated)
--
-- state_keep(k, c)  called by a denial: keeps the counter alive life_ms/2 past it, O(1) (a grant
--   rewrites the counter with a whole life_ms)
-- state_check(k, c, seq, seen_seq, seen_ms, now_ms) -> the counter to go on from
--   seq: the grant counter as read (nil when missing); seen_seq, seen_ms: the highest counter this
--   limiter instance saw and the Redis time of that reply (0 0 for a fresh instance).
--   The counter outlives every call by at least life_ms/2 (rewritten by every grant, renewed by
--   any denial that finds less left), so a caller's memory younger than that is comparable.
--   Lost or rolled back: the caller saw a higher counter less than life_ms/2 ago, so grants it
--   knows of are missing (restart without persistence, flush, restore of an older snapshot,
--   failover to a lagging replica), and they may still count at Gemini for up to one window:
--   nobody is admitted for one window (shared cooldown, never shortened), whatever the restart
--   fraction; the counter is set back to what the caller saw, so callers that saw less do not
--   pause again. Fresh (no counter, nothing to compare with: a first start, every process
--   restarted with Redis, an instance idle longer than life_ms/2): a new counter and, for one
--   window, restart_fraction of each limit (1 = the whole limit, no restart period).

local function state_check(k, c, seq, seen_seq, seen_ms, now_ms)
  if seen_seq > (seq or 0) and now_ms - seen_ms < c.life_ms / 2 then
    local until_ms = now_ms + c.window_ms
    if c.cool_until < until_ms then
      redis.call('SET', k.cool, until_ms, 'PX', c.window_ms)
      redis.call('SET', k.reason, 'limiter state lost or rolled back', 'PX', c.window_ms)
      c.cool_until = until_ms
    end
    redis.call('SET', k.seq, string.format('%.0f %.0f', seen_seq, c.cum_total), 'PX', c.life_ms)
    redis.call('HINCRBY', k.stats, 'state_losses', 1)
    return seen_seq
  end
  if not seq then
    redis.call('SET', k.seq, string.format('0 %.0f', c.cum_total), 'PX', c.life_ms)
    if c.fraction < 1 then
      c.restart_end = now_ms + c.window_ms
      redis.call('SET', k.epoch, c.restart_end, 'PX', c.window_ms)
    end
    return 0
  end
  return seq
end

local function state_keep(k, c)
  if redis.call('PTTL', k.seq) < c.life_ms / 2 then redis.call('PEXPIRE', k.seq, c.life_ms) end
end
