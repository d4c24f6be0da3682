-- limiter_status: prune the sliding log and report the window's usage and the cooldown left.
--
-- KEYS[1]  zset sliding log    KEYS[2] zset cum (running totals; see limiter_lib_window)
-- KEYS[3]  string gemini:rpm:current      KEYS[4] string gemini:tpm:current (the mirrors)
-- KEYS[5]  string cooldown until (Redis-time ms)
-- KEYS[6]  string gemini:limiter:state (the limiter's state: it holds the token sum)
-- ARGV[1]  window ms       ARGV[2] key TTL margin ms
-- Returns  {requests, tokens, cooldown_remaining_ms, oldest_age_ms}: oldest_age_ms is how long ago
-- the window's oldest grant was admitted (0 when empty); brings the state's sum and the mirrors
-- up to date (the same helpers and rules as limiter_acquire, the same window: the longest a
-- recent caller uses). It never creates the state: a missing one is limiter_acquire's to judge
-- (a first start, or a loss).

--! include limiter_lib_window
--! include limiter_lib_state

local k = {log = KEYS[1], cum = KEYS[2], rpm = KEYS[3], tpm = KEYS[4], state = KEYS[6]}
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_ms = tonumber(ARGV[1])
local flags = redis.call('MGET', k.rpm, k.tpm, KEYS[5], k.state)
local st = state_read(flags[4])
local count, sum, changed, was_count, was_sum = window_prune(k, st.sum,
  now_us - count_window_us(st, window_ms * 1000, now_ms), flags[1], flags[2])
if changed and st.sum then
  st.sum = sum
  state_write(k, nil, st, nil, nil, true)
end
mirror(k, flags[1], flags[2], was_count, was_sum, count, sum, window_ms + tonumber(ARGV[2]))
local until_ms = tonumber(flags[3])
local remaining = 0
if until_ms and until_ms > now_ms then remaining = until_ms - now_ms end
local oldest = redis.call('ZRANGE', k.log, 0, 0, 'WITHSCORES')
local age = 0
if oldest[2] then age = math.max(0, math.floor((now_us - tonumber(oldest[2])) / 1000)) end
return {count, sum, remaining, age}
