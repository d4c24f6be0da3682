-- limiter_cooldown: pause every worker until Redis time now + duration (after a Gemini 429).
--
-- KEYS[1]  string cooldown until (Redis-time ms); expires when the cooldown ends
-- KEYS[2]  string why (quota id, retry delay); same lifetime
-- KEYS[3]  hash   counters (cooldowns)
-- ARGV[1]  duration ms (> 0)     ARGV[2] reason     ARGV[3] stats TTL ms
-- Returns  {remaining_ms, extended 0/1}: an existing longer cooldown is never shortened.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local duration = tonumber(ARGV[1])
local target = now_ms + duration
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= target then
  return {current - now_ms, 0}
end
redis.call('SET', KEYS[1], target, 'PX', duration)
redis.call('SET', KEYS[2], ARGV[2], 'PX', duration)
redis.call('HINCRBY', KEYS[3], 'cooldowns', 1)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
return {duration, 1}
