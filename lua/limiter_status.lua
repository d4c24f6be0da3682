-- limiter_status: prune the sliding log and report the window's usage and the cooldown left.
--
-- KEYS[1]  zset sliding log    KEYS[2] zset cum (running totals; see limiter_lib_window)
-- KEYS[3]  string gemini:rpm:current      KEYS[4] string gemini:tpm:current (the live count/sum)
-- KEYS[5]  string cooldown until (Redis-time ms)
-- ARGV[1]  window ms       ARGV[2] key TTL margin ms
-- Returns  {requests, tokens, cooldown_remaining_ms}; brings KEYS[3] and KEYS[4] up to date
-- (the same helper and rules as limiter_acquire).

--! include limiter_lib_window

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
