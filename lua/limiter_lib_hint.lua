-- limiter_lib_hint: how long until a denied request can fit. Not a script: pasted into
-- limiter_acquire where it says `--! include limiter_lib_hint`.
--
-- retry_hint(k, need_req, need_tok, count, sum, now_us, window_us, ttl) -> ms, or nil when the
--   log alone cannot make that much room (only waiters ahead being served, or the restart
--   period ending). need_req/need_tok: requests and settled tokens that must leave the window
--   first; sum: the window's settled tokens.
--   Requests: the need_req-th oldest grant's expiry (ZRANGE by rank: O(log n)).
--   Tokens: need_tok is in settled tokens (Gemini's count, which a settle wrote in the log).
--   Exact when the oldest HINT_SCAN grants make the room: their settled tokens are added up in
--   admission order. Otherwise the room is made after the HINT_SCAN-th grant leaves, so the
--   hint is at most that grant's expiry (never late: the waiter looks again then and scans the
--   next ones), or earlier when k.cum, which indexes estimates, says so: need_tok converted at
--   the window's ratio of estimates to settled tokens, the grant whose expiry takes the
--   running total of estimates past it (one ZREVRANGEBYSCORE: O(log n)); an early hint costs
--   one more call (admission itself uses the settled sum: never an over-admission).
--   O(log n + HINT_SCAN) in all.

local function expiry_ms(at_us, now_us, window_us)
  return math.max(1, math.ceil((tonumber(at_us) + window_us - now_us) / 1000))
end

local HINT_SCAN = 32

-- The settled-token hint over the oldest HINT_SCAN grants -> ms, exact; or nil and the last
-- scanned grant's expiry ms (a bound: the room is made no earlier), nil when the log is shorter.
local function settled_hint(k, need_tok, now_us, window_us)
  local oldest = redis.call('ZRANGE', k.log, 0, HINT_SCAN - 1, 'WITHSCORES')
  local freed = 0
  for i = 1, #oldest, 2 do
    freed = freed + cost(oldest[i])
    if freed >= need_tok then return expiry_ms(oldest[i + 1], now_us, window_us), nil end
  end
  if #oldest == 2 * HINT_SCAN then return nil, expiry_ms(oldest[#oldest], now_us, window_us) end
  return nil, nil
end

-- The estimate-index hint (k.cum): ms, or nil when the estimates cannot tell.
local function estimate_hint(k, need_tok, count, sum, now_us, window_us, ttl)
  cum_check(k, count, ttl)
  local first = redis.call('ZRANGE', k.cum, 0, 0, 'WITHSCORES')
  local last = redis.call('ZRANGE', k.cum, -1, -1, 'WITHSCORES')
  if not first[2] then return nil end
  local _, last_est = cum_parts(last[1])
  if not last_est then return nil end
  local estimated = tonumber(last[2]) + last_est - tonumber(first[2])
  if sum > 0 and estimated > 0 then need_tok = math.ceil(need_tok * estimated / sum) end
  if need_tok > estimated then return nil end
  local target = string.format('%.0f', tonumber(first[2]) + need_tok)
  local hit = redis.call('ZREVRANGEBYSCORE', k.cum, '(' .. target, '-inf', 'LIMIT', 0, 1,
    'WITHSCORES')
  if not hit[1] then return nil end
  local at, est = cum_parts(hit[1])
  if not at or tonumber(hit[2]) + est < tonumber(target) then return nil end
  return expiry_ms(at, now_us, window_us)
end

local function retry_hint(k, need_req, need_tok, count, sum, now_us, window_us, ttl)
  local retry = 1
  if need_req > 0 then
    if need_req > count then return nil end
    local e = redis.call('ZRANGE', k.log, need_req - 1, need_req - 1, 'WITHSCORES')
    retry = expiry_ms(e[2], now_us, window_us)
  end
  if need_tok > 0 then
    local exact, bound = settled_hint(k, need_tok, now_us, window_us)
    local hint = exact or estimate_hint(k, need_tok, count, sum, now_us, window_us, ttl)
    if bound then hint = math.min(hint or bound, bound) end
    if not hint then return nil end
    retry = math.max(retry, hint)
  end
  return retry
end
