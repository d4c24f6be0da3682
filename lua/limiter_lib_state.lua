-- limiter_lib_state: is the shared state the one this caller saw? Not a script: pasted into
-- limiter_acquire, limiter_status and limiter_settle where they say
-- `--! include limiter_lib_state`.
--
-- k.seq  gemini:limiter:seq: "grants total": the grant counter (only grows; rebuilt above every
--        value anyone saw when lost) and the estimated tokens ever granted (the running total
--        the next cum entry starts at). The format every earlier version reads and writes.
-- k.state  gemini:limiter:state: "sum last_id last_us win_ms win_until_ms lost_until_ms",
--        written with the log:
--        sum: the window's settled token sum (the truth gemini:tpm:current mirrors)
--        last_id last_us: the newest grant (id, admission µs), "- 0" when unknown
--        win_ms win_until_ms: the longest window a caller counts grants over, kept while any
--        caller keeps granting (until the last grant + its window): nobody prunes what another
--        still counts; a lowered window takes effect once the longer one's grants are gone
--        lost_until_ms: the end of the pause the last detected loss set (0: none)
-- k.epoch  Redis-time ms the restart period ends (set only for that period)
-- k.cool / k.reason / k.stats  the shared cooldown, its reason, the counters
-- c: config and flags (window_ms, fraction, life_ms; cool_until and restart_end are updated)
--
-- counter_read(raw) -> seq, total (nil when missing or unreadable)
-- state_read(raw) -> st {sum, gid, at, win, win_until, lost_until} (fields nil when missing)
-- state_write(k, c, st, seq, total, keep)  the counter (when seq is given) and the state, with a
--   whole life_ms (keep: their TTLs as they are)
-- state_keep(k, c)  keeps the counter and the state alive life_ms/2 past a call that did not
--   write them, O(1)
-- count_window_us(st, window_us, now_ms) -> the window to count grants over: the caller's, or a
--   longer one recorded in the state while it is in force
-- note_window(st, window_ms, now_ms): a grant by a caller counting over window_ms
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
--   whatever the restart fraction (the longest window in force: every caller's grants must
--   have left). The first caller to find it (`first`) sets that pause, records it in the
--   state, counts it, and puts the counter above any value anyone saw (Redis µs), so no other
--   instance takes the repaired state for a second loss; the newest-grant record is cleared.
--   Others that find a grant of theirs missing while that pause runs change nothing (lost,
--   not first): one pause and one count per loss, whatever other cooldowns (a 429) do.
--   The counter lost alone (evicted) while the log holds grants, or while the state survives,
--   is not a loss: it is rebuilt as max(what the caller saw, Redis time in µs), a value no
--   earlier counter reached (a flush or a restart takes the state too). Fresh (no
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
  local sum, gid, at, win, win_until, lost_until =
    string.match(raw, '^(%-?%d+) (%S+) (%d+) (%d+) (%d+) (%d+)$')
  st.sum, st.gid, st.at = tonumber(sum), gid, tonumber(at)
  st.win, st.win_until, st.lost_until = tonumber(win), tonumber(win_until), tonumber(lost_until)
  return st
end

local function state_write(k, c, st, seq, total, keep)
  local value = string.format('%.0f %s %.0f %.0f %.0f %.0f', st.sum, st.gid or '-', st.at or 0,
    st.win or 0, st.win_until or 0, st.lost_until or 0)
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

local function note_window(st, window_ms, now_ms)
  if st.win and st.win_until and st.win_until > now_ms then
    st.win = math.max(st.win, window_ms)
    st.win_until = math.max(st.win_until, now_ms + window_ms)
  else
    st.win, st.win_until = window_ms, now_ms + window_ms
  end
end

local function grant_gone(k, gid, at, cutoff_us)
  if not gid or gid == '-' or not at or at <= cutoff_us then return false end
  local prefix = gid .. ':'
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', k.log, at, at)) do
    if string.sub(entry, 1, #prefix) == prefix then return false end
  end
  return true
end

local function state_check(k, c, st, seq, seen, mine, count, now_us, cutoff_us, state_found)
  local now_ms = math.floor(now_us / 1000)
  local young = seen.seq > 0 and now_ms - seen.ms < c.life_ms / 2
  local lost = grant_gone(k, mine.gid, mine.at, cutoff_us)
    or (st.gid ~= mine.gid and grant_gone(k, st.gid, st.at, cutoff_us))
    or (young and seq ~= nil and seen.seq > seq)
    or (young and seq == nil and count == 0 and not state_found)
  if lost then
    if (st.lost_until or 0) > now_ms then
      if seq == nil then st.dirty = true end
      return true, seq or seen.seq, false  -- found already: its pause runs
    end
    local pause_ms = math.floor((now_us - cutoff_us) / 1000)  -- the longest window in force
    local until_ms = now_ms + pause_ms
    if c.cool_until < until_ms then
      redis.call('SET', k.cool, until_ms, 'PX', pause_ms)
      redis.call('SET', k.reason, LOSS_REASON, 'PX', pause_ms)
      c.cool_until = until_ms
    end
    redis.pcall('HINCRBY', k.stats, 'state_losses', 1)
    st.gid, st.at, st.lost_until, st.dirty = '-', 0, until_ms, true
    return true, math.max(seen.seq, seq or 0, now_us), true
  end
  if seq == nil then
    st.dirty = true
    if count > 0 or state_found then  -- the counter lost alone: no grant is missing
      return false, math.max(seen.seq, now_us), false
    end
    if c.fraction < 1 then
      c.restart_end = now_ms + c.window_ms
      redis.call('SET', k.epoch, c.restart_end, 'PX', c.window_ms)
    end
    return false, 0, false
  end
  return false, seq, false
end
