-- limiter_lib_state: is the shared state the one this caller saw? Not a script: pasted into
-- limiter_acquire and limiter_status where they say `--! include limiter_lib_state`.
--
-- k.seq  gemini:limiter:seq: "grants total sum last_id last_us", one string written with the log:
--        grants: the grant counter (only grows; rebuilt from Redis time when lost alone)
--        total: estimated tokens ever granted (the running total the next cum entry starts at)
--        sum: the window's settled token sum (the truth gemini:tpm:current mirrors)
--        last_id last_us: the newest grant (id, admission µs), "- 0" when unknown
--        (a counter written by an older version holds only "grants total": the rest is rebuilt)
-- k.epoch  Redis-time ms the restart period ends (set only for that period)
-- k.cool / k.reason / k.stats  the shared cooldown, its reason, the counters
-- c: config and flags (window_ms, fraction, life_ms; cool_until and restart_end are updated)
--
-- state_read(raw) -> st {seq, total, sum, gid, at} (fields nil when missing)
-- state_write(k, c, st, keep)  the counter string, with a whole life_ms (keep: its TTL as is)
-- state_keep(k, c)  keeps the counter alive life_ms/2 past a call that did not write it, O(1)
-- grant_gone(k, gid, at, cutoff_us) -> true when grant `gid` admitted at `at` µs should still be in
--   the window (at > cutoff_us) but the log does not hold it: O(log n)
-- state_check(k, c, st, seen, mine, count, now_us) -> lost
--   seen = {seq, ms}: the highest counter this limiter instance saw and the Redis time of that
--   reply (0 0 for a fresh instance); mine = {gid, at}: its newest grant ("-" 0: none).
--   The state is lost or rolled back (restart without persistence, flush, eviction of the log,
--   restore of an older snapshot, failover to a lagging replica) when a grant that must still be
--   in the window is missing from the log (the caller's newest, or the newest the counter
--   records), or the counter is lower than the caller saw less than life_ms/2 ago, or it is
--   missing with an empty log after the caller saw one. Those grants may still count at Gemini
--   for up to one window: nobody is admitted for one window (shared cooldown, never shortened),
--   whatever the restart fraction; the counter is set back to at least what the caller saw, so
--   callers that saw less do not pause again, and the newest-grant record is cleared.
--   The counter lost alone (evicted) while the log holds grants is not a loss: it is rebuilt as
--   max(what the caller saw, Redis time in µs), a value no earlier counter reached, so no
--   instance takes it for a rollback. Fresh (no counter, an empty log, nothing to compare with:
--   a first start, every process restarted with Redis, an instance idle longer than
--   life_ms/2): a new counter and, for one window, restart_fraction of each limit.
--   st is updated in place (st.dirty: the counter must be written; st.sum nil: to rebuild).

local function state_read(raw)
  local st = {}
  if not raw then return st end
  local seq, total, rest = string.match(raw, '^(%d+) (%d+)(.*)$')
  st.seq, st.total = tonumber(seq), tonumber(total)
  if rest then
    local sum, gid, at = string.match(rest, '^ (%-?%d+) (%S+) (%d+)$')
    st.sum, st.gid, st.at = tonumber(sum), gid, tonumber(at)
  end
  return st
end

local function state_write(k, c, st, keep)
  local value = string.format('%.0f %.0f %.0f %s %.0f', st.seq, st.total, st.sum,
    st.gid or '-', st.at or 0)
  if keep then
    redis.call('SET', k.seq, value, 'KEEPTTL')
  else
    redis.call('SET', k.seq, value, 'PX', c.life_ms)
  end
end

local function state_keep(k, c)
  if redis.call('PTTL', k.seq) < c.life_ms / 2 then redis.call('PEXPIRE', k.seq, c.life_ms) end
end

local function grant_gone(k, gid, at, cutoff_us)
  if not gid or gid == '-' or not at or at <= cutoff_us then return false end
  local prefix = gid .. ':'
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', k.log, at, at)) do
    if string.sub(entry, 1, #prefix) == prefix then return false end
  end
  return true
end

local function state_check(k, c, st, seen, mine, count, now_us)
  local now_ms = math.floor(now_us / 1000)
  local cutoff = now_us - c.window_ms * 1000
  local young = seen.seq > 0 and now_ms - seen.ms < c.life_ms / 2
  local lost = grant_gone(k, mine.gid, mine.at, cutoff)
    or (st.gid ~= mine.gid and grant_gone(k, st.gid, st.at, cutoff))
    or (young and st.seq ~= nil and seen.seq > st.seq)
    or (young and st.seq == nil and count == 0)
  if lost then
    local until_ms = now_ms + c.window_ms
    if c.cool_until < until_ms then
      redis.call('SET', k.cool, until_ms, 'PX', c.window_ms)
      redis.call('SET', k.reason, 'limiter state lost or rolled back', 'PX', c.window_ms)
      c.cool_until = until_ms
    end
    redis.call('HINCRBY', k.stats, 'state_losses', 1)
    st.seq = math.max(seen.seq, st.seq or 0)
    st.gid, st.at, st.sum, st.dirty = '-', 0, nil, true
    return true
  end
  if st.seq == nil then
    st.dirty = true
    if count > 0 then
      st.seq = math.max(seen.seq, now_us)  -- the counter alone was lost: no grant is missing
    else
      st.seq = 0
      if c.fraction < 1 then
        c.restart_end = now_ms + c.window_ms
        redis.call('SET', k.epoch, c.restart_end, 'PX', c.window_ms)
      end
    end
  end
  return false
end
