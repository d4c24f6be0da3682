-- The limiter script as shipped before the round-2 review fixes (commit a9608f4), helpers
-- expanded: tests run it beside the current one to check a rolling upgrade.
-- limiter_settle: replace a grant's token estimate with the actual count (Gemini usage_metadata).
--
-- KEYS[1]  zset   sliding log: "grant id:tokens charged" -> admission time (µs)
-- KEYS[2]  string gemini:tpm:current: the live sum of the tokens charged over the log
-- ARGV[1]  grant id      ARGV[2] tokens charged at admission (the estimate)
-- ARGV[3]  admission time µs (from the grant)      ARGV[4] actual tokens      ARGV[5] window ms
-- Returns  the change applied to the window's token count (0 when nothing to do).
--
-- Idempotent: settling again with the same figure changes nothing. A grant that has left the
-- window (or was lost with a Redis restart) no longer counts anywhere, so settling it is a no-op.
-- The member is found in O(log n): by its admission-time name, else (settled before) among the
-- members with exactly its admission time. If the live sum is missing it is left missing: the
-- next admission rebuilds it from the log (which holds the settled figure).

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local log, prefix = KEYS[1], ARGV[1] .. ':'
local member = prefix .. ARGV[2]
local score = tonumber(redis.call('ZSCORE', log, member))
if not score then
  member = nil
  local at = tonumber(ARGV[3])
  if at > 0 then
    for _, entry in ipairs(redis.call('ZRANGEBYSCORE', log, at, at)) do
      if string.sub(entry, 1, #prefix) == prefix then member, score = entry, at end
    end
  end
end
if not member or score <= now_us - tonumber(ARGV[5]) * 1000 then
  return 0
end
local actual = tonumber(ARGV[4])
local delta = actual - tonumber(string.sub(member, #prefix + 1))
if delta ~= 0 then
  redis.call('ZREM', log, member)
  redis.call('ZADD', log, score, prefix .. actual)
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], delta) end
end
return delta
