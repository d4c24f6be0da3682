-- The limiter script as shipped before the round-2 review fixes (commit a9608f4), helpers
-- expanded: tests run it beside the current one to check a rolling upgrade.
-- limiter_status: prune the sliding log and report the window's usage and the cooldown left.
--
-- KEYS[1]  zset sliding log    KEYS[2] zset cum (running totals; see limiter_lib_window)
-- KEYS[3]  string gemini:rpm:current      KEYS[4] string gemini:tpm:current (the live count/sum)
-- KEYS[5]  string cooldown until (Redis-time ms)
-- ARGV[1]  window ms       ARGV[2] key TTL margin ms
-- Returns  {requests, tokens, cooldown_remaining_ms}; brings KEYS[3] and KEYS[4] up to date
-- (the same helper and rules as limiter_acquire).

-- limiter_lib_window: helpers for the sliding log and its live keys. Not a script: pasted into
-- limiter_acquire and limiter_status where they say `--! include limiter_lib_window`.
--
-- k.log  zset "grant id:tokens charged" -> admission µs (Redis TIME); a settle rewrites tokens
-- k.cum  zset "grant id:admission µs:estimate" -> estimated tokens granted before it: the same
--        grants as the log in the same order (added and pruned together), indexed by running
--        total so "when will N tokens have left" is one O(log n) lookup (limiter_lib_hint)
-- k.rpm / k.tpm  gemini:rpm:current / gemini:tpm:current: count and token sum over the log
--
-- window_prune(k, live_count, live_sum, cutoff_us, ttl) -> count, sum
--   live_count/live_sum: the two live keys as read (nil when missing). Drops at most PRUNE_MAX
--   grants admitted at or before cutoff_us from log and cum and takes them off the live keys:
--   each grant leaves once, so O(1) amortised per grant and O(log n + PRUNE_MAX) per call. Grants
--   left over by the cap stay counted until a later call (conservative: never an over-admission).
--   A live key lost or altered (eviction, a flushed key, an outside write) is rebuilt from the
--   log: O(n), only after such damage.
-- cum_rebuild(k, count, ttl) -> running total: cum rebuilt from the log (O(n): only when the
--   counter that holds the running total was lost, or cum was damaged)
-- cum_check(k, count, ttl): rebuilds cum when its size differs from the log's; called before cum
--   is read (a token retry hint), not on every grant.

local PRUNE_MAX = 256

-- Tokens in a member ending in ":<tokens>" (log and cum members both do).
local function cost(entry)
  return tonumber(string.match(entry, ':(%d+)$') or '0')
end

local function cum_rebuild(k, count, ttl)
  redis.call('DEL', k.cum)
  local before = 0
  for start = 0, count - 1, 1000 do
    local part = redis.call('ZRANGE', k.log, start, start + 999, 'WITHSCORES')
    for i = 1, #part, 2 do
      local gid, tok = string.match(part[i], '^(.*):(%d+)$')
      local at = string.format('%.0f', tonumber(part[i + 1]))
      redis.call('ZADD', k.cum, before, gid .. ':' .. at .. ':' .. tok)
      before = before + tonumber(tok)
    end
  end
  if count > 0 then redis.call('PEXPIRE', k.cum, ttl) end
  return before
end

local function cum_check(k, count, ttl)
  if redis.call('ZCARD', k.cum) ~= count then cum_rebuild(k, count, ttl) end
end

local function window_prune(k, live_count, live_sum, cutoff_us, ttl)
  local removed, freed = 0, 0
  local oldest = redis.call('ZRANGE', k.log, 0, 0, 'WITHSCORES')
  if oldest[2] and tonumber(oldest[2]) <= cutoff_us then
    local old = redis.call('ZRANGEBYSCORE', k.log, '-inf', cutoff_us, 'LIMIT', 0, PRUNE_MAX)
    for i = 1, #old do freed = freed + cost(old[i]) end
    removed = #old
    redis.call('ZREMRANGEBYRANK', k.log, 0, removed - 1)
    redis.call('ZREMRANGEBYRANK', k.cum, 0, removed - 1)
  end
  local count, sum = redis.call('ZCARD', k.log), live_sum
  if count == 0 then
    -- An empty window holds nothing: correct whatever a stale key still says.
    if (live_count or 0) ~= 0 or (sum and sum ~= 0) then
      redis.call('SET', k.rpm, 0, 'PX', ttl)
      redis.call('SET', k.tpm, 0, 'PX', ttl)
    end
    sum = 0
  elseif live_count and sum and live_count - removed == count then
    if removed > 0 then
      redis.call('DECRBY', k.rpm, removed)
      sum = redis.call('DECRBY', k.tpm, freed)
    end
  else
    sum = 0
    for start = 0, count - 1, 1000 do
      local part = redis.call('ZRANGE', k.log, start, start + 999)
      for i = 1, #part do sum = sum + cost(part[i]) end
    end
    redis.call('SET', k.rpm, count, 'PX', ttl)
    redis.call('SET', k.tpm, string.format('%.0f', sum), 'PX', ttl)
  end
  return count, sum
end


local k = {log = KEYS[1], cum = KEYS[2], rpm = KEYS[3], tpm = KEYS[4]}
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_ms = tonumber(ARGV[1])
local flags = redis.call('MGET', k.rpm, k.tpm, KEYS[5])
local count, sum = window_prune(k, tonumber(flags[1]), tonumber(flags[2]),
  now_us - window_ms * 1000, window_ms + tonumber(ARGV[2]))
local until_ms = tonumber(flags[3])
local remaining = 0
if until_ms and until_ms > now_ms then remaining = until_ms - now_ms end
return {count, sum, remaining}
