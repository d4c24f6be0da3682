-- limiter_lib_hint: how long until a denied request can fit. Not a script: pasted into
-- limiter_acquire where it says `--! include limiter_lib_hint`.
--
-- retry_hint(k, need_req, need_tok, count, now_us, window_us, ttl) -> ms, or nil when the log alone
--   cannot make that much room (only waiters ahead being served, or the restart period ending).
--   need_req/need_tok: requests and tokens that must leave the window first.
--   Requests: the need_req-th oldest grant's expiry (ZRANGE by rank: O(log n)).
--   Tokens: the grant whose expiry takes the running total of estimates past need_tok, found in
--   k.cum (one ZREVRANGEBYSCORE: O(log n)). Estimates, not settled figures: a settle shifts the
--   hint by its difference; an early hint costs one more call, never an over-admission (the
--   admission itself uses the exact settled sum).

local function expiry_ms(at_us, now_us, window_us)
  return math.max(1, math.ceil((tonumber(at_us) + window_us - now_us) / 1000))
end

local function retry_hint(k, need_req, need_tok, count, now_us, window_us, ttl)
  local retry = 1
  if need_req > 0 then
    if need_req > count then return nil end
    local e = redis.call('ZRANGE', k.log, need_req - 1, need_req - 1, 'WITHSCORES')
    retry = expiry_ms(e[2], now_us, window_us)
  end
  if need_tok > 0 then
    cum_check(k, count, ttl)
    local first = redis.call('ZRANGE', k.cum, 0, 0, 'WITHSCORES')
    if not first[2] then return nil end
    local target = string.format('%.0f', tonumber(first[2]) + need_tok)
    local hit = redis.call('ZREVRANGEBYSCORE', k.cum, '(' .. target, '-inf', 'LIMIT', 0, 1,
      'WITHSCORES')
    local at, est = string.match(hit[1], ':(%d+):(%d+)$')
    if tonumber(hit[2]) + tonumber(est) < tonumber(target) then return nil end
    retry = math.max(retry, expiry_ms(at, now_us, window_us))
  end
  return retry
end
