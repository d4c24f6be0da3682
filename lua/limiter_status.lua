-- limiter_status: prune the sliding log and report the window's usage and the cooldown left.
--
-- KEYS[1]  zset   sliding log: grant id -> admission time (µs)
-- KEYS[2]  hash   grant id -> tokens charged; field '~sum' = their running sum
-- KEYS[3]  string gemini:rpm:current      KEYS[4] string gemini:tpm:current
-- KEYS[5]  string cooldown until (Redis-time ms)
-- ARGV[1]  window ms       ARGV[2] key TTL margin ms
-- Returns  {requests, tokens, cooldown_remaining_ms}; refreshes KEYS[3] and KEYS[4].

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_ms = tonumber(ARGV[1])
local ttl = window_ms + tonumber(ARGV[2])
local cutoff = now_us - window_ms * 1000
while true do
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 500)
  if #old == 0 then break end
  local vals = redis.call('HMGET', KEYS[2], unpack(old))
  local freed = 0
  for i = 1, #old do
    if vals[i] then freed = freed + tonumber(vals[i]) end
  end
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HINCRBY', KEYS[2], '~sum', -freed)
end
local count = redis.call('ZCARD', KEYS[1])
local sum = 0
if count > 0 then sum = tonumber(redis.call('HGET', KEYS[2], '~sum') or '0') end
redis.call('SET', KEYS[3], count, 'PX', ttl)
redis.call('SET', KEYS[4], sum, 'PX', ttl)
local until_ms = tonumber(redis.call('GET', KEYS[5]))
local remaining = 0
if until_ms and until_ms > now_ms then remaining = until_ms - now_ms end
return {count, sum, remaining}
