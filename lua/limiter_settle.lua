-- limiter_settle: replace a grant's token estimate with the actual count (Gemini usage_metadata).
--
-- KEYS[1]  zset   sliding log: grant id -> admission time (µs)
-- KEYS[2]  hash   grant id -> tokens charged; field '~sum' = their running sum
-- KEYS[3]  string gemini:tpm:current
-- ARGV[1]  grant id      ARGV[2] actual tokens      ARGV[3] window ms      ARGV[4] key TTL ms
-- Returns  the change applied to the window's token count (0 when nothing to do).
--
-- Idempotent: settling again with the same figure changes nothing. A grant that has left the
-- window (or was lost with a Redis restart) no longer counts anywhere, so settling it is a no-op.

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not score or score <= now_us - tonumber(ARGV[3]) * 1000 then
  return 0
end
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if not old then
  return 0
end
local delta = tonumber(ARGV[2]) - old
if delta ~= 0 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  local sum = redis.call('HINCRBY', KEYS[2], '~sum', delta)
  redis.call('SET', KEYS[3], sum, 'PX', tonumber(ARGV[4]))
end
return delta
