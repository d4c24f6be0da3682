-- limiter_lib_state: is the shared state the one this caller saw? Not a script: pasted into
-- limiter_acquire, limiter_status and limiter_settle where they say
-- `--! include limiter_lib_state`.
--
-- k.seq  gemini:limiter:seq: "grants total": the grant counter (only grows; rebuilt above every
--        value anyone saw when lost) and the estimated tokens ever granted (the running total
--        the next cum entry starts at). The format every earlier version reads and writes.
-- k.state  gemini:limiter:state: "sum last_id last_us win_ms win_until_ms", written with the log:
--        sum: the window's settled token sum (the truth gemini:tpm:current mirrors)
--        last_id last_us: the newest grant (id, admission µs), "- 0" when unknown
--        win_ms win_until_ms: the longest window a recent caller counts grants over, and until
--        when (its last grant + that window): nobody prunes what another still counts
-- k.epoch  Redis-time ms the restart period ends (set only for that period)
-- k.cool / k.reason / k.stats  the shared cooldown, its reason, the counters
-- c: config and flags (window_ms, fraction, life_ms; cool_until and restart_end are updated)
--
-- counter_read(raw) -> seq, total (nil when missing or unreadable)
-- state_read(raw) -> st {sum, gid, at, win, win_until} (fields nil when missing)
-- state_write(k, c, st, seq, total, keep)  the counter (when seq is given) and the state, with a
--   whole life_ms (keep: their TTLs as they are)
-- state_keep(k, c)  keeps the counter and the state alive life_ms/2 past a call that did not
--   write them, O(1)
-- count_window_us(st, window_us, now_ms) -> the window to count grants over: the caller's, or a
--   longer one another caller used until win_until
-- grant_gone(k, gid, at, cutoff_us) -> true when grant `gid` admitted at `at` µs should still be in
--   the window (at > cutoff_us) but the log does not hold it: O(log n)
-- state_check(k, c, st, seq, seen, mine, count, now_us, cutoff_us) -> lost, seq, first
--   seen = {seq, ms}: the highest counter this limiter instance saw and the Redis time of that
--   reply (0 0 for a fresh instance); mine = {gid, at}: its newest grant ("-" 0: none).
--   The state is lost or rolled back (restart without persistence, flush, eviction of the log,
--   restore of an older snapshot, failover to a lagging replica) when a grant that must still be
--   in the window is missing from the log (the caller's newest, or the newest the state
--   records), or the counter is lower than the caller saw less than life_ms/2 ago, or it is
--   missing with an empty log after the caller saw one. Those grants may still count at Gemini
--   for up to one window: nobody is admitted for one window (shared cooldown, never shortened),
--   whatever the restart fraction. The first caller to find it (`first`) sets that pause,
--   counts it, and puts the counter above any value anyone saw (Redis µs), so no other
--   instance takes the repaired state for a second loss; the newest-grant record is cleared.
--   Others that find a grant of theirs missing while that pause runs change nothing (lost,
--   not first): one pause and one count per loss.
--   The counter lost alone (evicted) while the log holds grants is not a loss: it is rebuilt as
--   max(what the caller saw, Redis time in µs), a value no earlier counter reached. Fresh (no
--   counter, an empty log, nothing to compare with: a first start, every process restarted
--   with Redis, an instance idle longer than life_ms/2): a new counter and, for one window,
--   restart_fraction of each limit. st.dirty: the state must be written.

local LOSS_REASON = 'limiter state lost or rolled back'

local function counter_read(raw)
  if not raw then return nil, nil end
  local seq, total = string.match(raw, '^(%d+) (%d+)')
  return tonumber(seq), tonumber(total)
end

local function state_read(raw)
  local st = {}
  if not raw then return st end
  local sum, gid, at, win, win_until = string.match(raw, '^(%-?%d+) (%S+) (%d+) (%d+) (%d+)$')
  st.sum, st.gid, st.at = tonumber(sum), gid, tonumber(at)
  st.win, st.win_until = tonumber(win), tonumber(win_until)
  return st
end

local function state_write(k, c, st, seq, total, keep)
  local value = string.format('%.0f %s %.0f %.0f %.0f', st.sum, st.gid or '-', st.at or 0,
    st.win or 0, st.win_until or 0)
  if keep then
    redis.call('SET', k.state, value, 'KEEPTTL')
  else
    redis.call('SET', k.state, value, 'PX', c.life_ms)
  end
  if seq then
    redis.call('SET', k.seq, string.format('%.0f %.0f', seq, total), 'PX', c.life_ms)
  end
end

local function state_keep(k, c)
  if redis.call('PTTL', k.seq) < c.life_ms / 2 then
    redis.call('PEXPIRE', k.seq, c.life_ms)
    redis.call('PEXPIRE', k.state, c.life_ms)
  end
end

local function count_window_us(st, window_us, now_ms)
  if st.win and st.win_until and st.win_until > now_ms and st.win * 1000 > window_us then
    return st.win * 1000
  end
  return window_us
end

local function grant_gone(k, gid, at, cutoff_us)
  if not gid or gid == '-' or not at or at <= cutoff_us then return false end
  local prefix = gid .. ':'
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', k.log, at, at)) do
    if string.sub(entry, 1, #prefix) == prefix then return false end
  end
  return true
end

local function state_check(k, c, st, seq, seen, mine, count, now_us, cutoff_us)
  local now_ms = math.floor(now_us / 1000)
  local young = seen.seq > 0 and now_ms - seen.ms < c.life_ms / 2
  local lost = grant_gone(k, mine.gid, mine.at, cutoff_us)
    or (st.gid ~= mine.gid and grant_gone(k, st.gid, st.at, cutoff_us))
    or (young and seq ~= nil and seen.seq > seq)
    or (young and seq == nil and count == 0)
  if lost then
    if c.cool_until > now_ms and c.cool_reason == LOSS_REASON then
      if seq == nil then st.dirty = true end
      return true, seq or seen.seq, false  -- found already: its pause runs
    end
    local until_ms = now_ms + c.window_ms
    if c.cool_until < until_ms then
      redis.call('SET', k.cool, until_ms, 'PX', c.window_ms)
      redis.call('SET', k.reason, LOSS_REASON, 'PX', c.window_ms)
      c.cool_until = until_ms
    end
    redis.call('HINCRBY', k.stats, 'state_losses', 1)
    st.gid, st.at, st.dirty = '-', 0, true
    return true, math.max(seen.seq, seq or 0, now_us), true
  end
  if seq == nil then
    st.dirty = true
    if count > 0 then return false, math.max(seen.seq, now_us), false end  -- counter lost alone
    if c.fraction < 1 then
      c.restart_end = now_ms + c.window_ms
      redis.call('SET', k.epoch, c.restart_end, 'PX', c.window_ms)
    end
    return false, 0, false
  end
  return false, seq, false
end
