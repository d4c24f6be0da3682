-- limiter_status: prune the sliding log and report the window's usage and the cooldown left.
--
-- KEYS[1]  zset   sliding log: "grant id:tokens charged" -> admission time (µs)
-- KEYS[2]  string gemini:rpm:current      KEYS[3] string gemini:tpm:current (the live count/sum)
-- KEYS[4]  string cooldown until (Redis-time ms)
-- ARGV[1]  window ms       ARGV[2] key TTL margin ms
-- Returns  {requests, tokens, cooldown_remaining_ms}; brings KEYS[2] and KEYS[3] up to date
-- (same rules as limiter_acquire: decremented by what expired, rebuilt from the log if lost).

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_ms = tonumber(ARGV[1])
local ttl = window_ms + tonumber(ARGV[2])
local log, rpmk, tpmk = KEYS[1], KEYS[2], KEYS[3]

local function charged(list)
  local total = 0
  for i = 1, #list do total = total + tonumber(string.match(list[i], ':(%d+)$') or '0') end
  return total
end

local flags = redis.call('MGET', rpmk, tpmk, KEYS[4])
local cutoff = now_us - window_ms * 1000
local removed, freed = 0, 0
local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, 500)
while #old > 0 do
  freed = freed + charged(old)
  redis.call('ZREMRANGEBYRANK', log, 0, #old - 1)
  removed = removed + #old
  if #old < 500 then break end
  old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, 500)
end
local count = redis.call('ZCARD', log)
local live_count, sum = tonumber(flags[1]) or 0, tonumber(flags[2])
if count == 0 then
  if live_count ~= 0 or (sum and sum ~= 0) then
    redis.call('SET', rpmk, 0, 'PX', ttl)
    redis.call('SET', tpmk, 0, 'PX', ttl)
  end
  sum = 0
elseif live_count - removed == count and sum then
  if removed > 0 then
    redis.call('DECRBY', rpmk, removed)
    sum = redis.call('DECRBY', tpmk, freed)
  end
else
  sum = 0
  for start = 0, count - 1, 1000 do
    sum = sum + charged(redis.call('ZRANGE', log, start, start + 999))
  end
  redis.call('SET', rpmk, count, 'PX', ttl)
  redis.call('SET', tpmk, string.format('%.0f', sum), 'PX', ttl)
end
local until_ms = tonumber(flags[3])
local remaining = 0
if until_ms and until_ms > now_ms then remaining = until_ms - now_ms end
return {count, sum, remaining}
