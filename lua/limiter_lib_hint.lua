-- limiter_lib_hint: how long until a denied request can fit. Not a script: pasted into
-- limiter_acquire where it says `--! include limiter_lib_hint`.
--
-- retry_hint(k, need_req, need_tok, count, sum, now_us, window_us, ttl) -> ms, or nil when the
--   log alone cannot make that much room (only waiters ahead being served, or the restart
--   period ending). need_req/need_tok: requests and settled tokens that must leave the window
--   first; sum: the window's settled tokens.
--   Requests: the need_req-th oldest grant's expiry (ZRANGE by rank: O(log n)).
--   Tokens: k.cum indexes estimates, need_tok is in settled tokens (Gemini's count, which a
--   settle wrote): it is converted at the window's ratio of estimates to settled tokens, then
--   the grant whose expiry takes the running total of estimates past it is found in k.cum (one
--   ZREVRANGEBYSCORE: O(log n)). Exact when the estimates are off by the same factor; otherwise
--   an early hint costs one more call, never an over-admission (admission uses the settled
--   sum), and a late one is bounded by the expiry of the grants that make the room.

local function expiry_ms(at_us, now_us, window_us)
  return math.max(1, math.ceil((tonumber(at_us) + window_us - now_us) / 1000))
end

local function retry_hint(k, need_req, need_tok, count, sum, now_us, window_us, ttl)
  local retry = 1
  if need_req > 0 then
    if need_req > count then return nil end
    local e = redis.call('ZRANGE', k.log, need_req - 1, need_req - 1, 'WITHSCORES')
    retry = expiry_ms(e[2], now_us, window_us)
  end
  if need_tok > 0 then
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
    retry = math.max(retry, expiry_ms(at, now_us, window_us))
  end
  return retry
end
