-- limiter_acquire: admit one Gemini request against the RPM and TPM sliding windows, atomically.
--
-- KEYS[1]  zset  sliding log: grant id -> admission time (µs, Redis TIME)
-- KEYS[2]  hash  grant id -> tokens charged
-- KEYS[3]  string running sum of KEYS[2] (kept incrementally)
-- KEYS[4]  string epoch: Redis-time ms when this log started (missing = state lost)
-- KEYS[5]  zset  reservation queue: waiter id -> first-denial time (µs)
-- KEYS[6]  hash  waiter id -> "tokens:expires_ms"
-- KEYS[7]  string cooldown until (Redis-time ms)
-- KEYS[8]  string gemini:rpm:current      KEYS[9] string gemini:tpm:current
-- KEYS[10] hash  counters (grants, denials, denied_<reason>, waits, wait_ms_total)
-- ARGV[1]  grant id (client-generated: a retried call is idempotent)
-- ARGV[2]  tokens (estimate)              ARGV[3] RPM limit      ARGV[4] TPM limit
-- ARGV[5]  window ms                      ARGV[6] restart fraction (0 < f <= 1)
-- ARGV[7]  1 = queue a reservation when denied (acquire), 0 = one-shot (try_acquire)
-- ARGV[8]  ms the caller already waited (added to counters on grant)
-- ARGV[9]  reservation grace ms          ARGV[10] epoch TTL ms   ARGV[11] stats TTL ms
-- ARGV[12] key TTL margin ms
-- Returns  {granted 0/1, retry_after_ms, reason, granted_at_us, requests, tokens}
--          reason: ok | rpm | tpm | reserved | cooldown; requests/tokens = window usage after the call.
--
-- Reservations: a denied acquire() queues (FIFO by first denial). A queued waiter must leave room
-- only for the waiters ahead of it; anyone not queued must leave room for all of them. So a large
-- request cannot be starved by a stream of small ones.

local log, tok, sumk, epochk, waitq, waiters = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local gid, tokens = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, window_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fraction, register, waited = tonumber(ARGV[6]), ARGV[7] == '1', tonumber(ARGV[8])
local grace, margin = tonumber(ARGV[9]), tonumber(ARGV[12])

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_us = window_ms * 1000
local ttl = window_ms + margin

-- Idempotence: redis-py may rerun us after a lost reply; the first run's grant stands.
local prev = redis.call('ZSCORE', log, gid)
if prev then
  return {1, 0, 'ok', tonumber(prev), redis.call('ZCARD', log), tonumber(redis.call('GET', sumk) or '0')}
end

-- Prune what left the window, subtracting its tokens from the running sum (O(expired)).
local cutoff = now_us - window_us
local freed = 0
while true do
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, 500)
  if #old == 0 then break end
  local vals = redis.call('HMGET', tok, unpack(old))
  for i = 1, #old do
    if vals[i] then freed = freed + tonumber(vals[i]) end
  end
  redis.call('HDEL', tok, unpack(old))
  redis.call('ZREM', log, unpack(old))
end
local count = redis.call('ZCARD', log)
local sum
if count == 0 then
  sum = 0  -- an empty log holds no tokens, whatever a half-evicted state says
  redis.call('SET', sumk, 0, 'PX', ttl)
elseif freed > 0 then
  sum = redis.call('DECRBY', sumk, freed)
else
  sum = tonumber(redis.call('GET', sumk) or '0')
end

-- Lost state (flush, restart without persistence): start a new epoch and, for one window,
-- admit only a fraction of each limit (grants from before the loss may still count at Gemini).
local epoch = tonumber(redis.call('GET', epochk))
if not epoch then
  epoch = now_ms
  redis.call('SET', epochk, epoch, 'PX', tonumber(ARGV[10]))
else
  redis.call('PEXPIRE', epochk, tonumber(ARGV[10]))
end
local eff_rpm, eff_tpm = rpm, tpm
local restart_end = epoch + window_ms
if now_ms < restart_end and fraction < 1 then
  eff_rpm = math.max(1, math.floor(rpm * fraction))
  eff_tpm = math.max(1, math.floor(tpm * fraction))
end

-- Never shorten a TTL another waiter's entry relies on.
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function publish()
  redis.call('SET', KEYS[8], count, 'PX', ttl)
  redis.call('SET', KEYS[9], sum, 'PX', ttl)
  redis.call('PEXPIRE', KEYS[10], tonumber(ARGV[11]))
end

local function deny(reason, retry_ms)
  redis.call('HINCRBY', KEYS[10], 'denials', 1)
  redis.call('HINCRBY', KEYS[10], 'denied_' .. reason, 1)
  publish()
  return {0, retry_ms, reason, 0, count, sum}
end

-- Shared cooldown after a 429: nobody calls Gemini until it ends.
local until_ms = tonumber(redis.call('GET', KEYS[7]))
if until_ms and now_ms < until_ms then
  local w = redis.call('HGET', waiters, gid)
  if w then  -- keep a queued waiter's place through the cooldown
    redis.call('HSET', waiters, gid, string.match(w, '^(%d+):') .. ':' .. (until_ms + grace))
    extend(waitq, until_ms - now_ms + grace + ttl)
    extend(waiters, until_ms - now_ms + grace + ttl)
  end
  return deny('cooldown', until_ms - now_ms)
end

-- Reservations ahead of this request (all of them if it is not queued); drop lapsed ones.
local ahead_req, ahead_tok, all_req, all_tok, queued = 0, 0, 0, 0, false
local queue = redis.call('ZRANGE', waitq, 0, 999)
if #queue > 0 then
  local infos = redis.call('HMGET', waiters, unpack(queue))
  for i = 1, #queue do
    local w, wt, wexp = queue[i], nil, nil
    if infos[i] then wt, wexp = string.match(infos[i], '^(%d+):(%d+)$') end
    if not wt or tonumber(wexp) < now_ms then
      redis.call('ZREM', waitq, w)
      redis.call('HDEL', waiters, w)
    elseif w == gid then
      queued = true
    else
      if not queued then
        ahead_req, ahead_tok = ahead_req + 1, ahead_tok + tonumber(wt)
      end
      all_req, all_tok = all_req + 1, all_tok + tonumber(wt)
    end
  end
end
if not queued then ahead_req, ahead_tok = all_req, all_tok end

if count + ahead_req + 1 <= eff_rpm and sum + ahead_tok + tokens <= eff_tpm then
  redis.call('ZADD', log, 'NX', now_us, gid)
  redis.call('HSET', tok, gid, tokens)
  sum = redis.call('INCRBY', sumk, tokens)
  count = count + 1
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', tok, ttl)
  redis.call('PEXPIRE', sumk, ttl)
  if queued then
    redis.call('ZREM', waitq, gid)
    redis.call('HDEL', waiters, gid)
  end
  redis.call('HINCRBY', KEYS[10], 'grants', 1)
  if waited > 0 then
    redis.call('HINCRBY', KEYS[10], 'waits', 1)
    redis.call('HINCRBY', KEYS[10], 'wait_ms_total', waited)
  end
  publish()
  return {1, 0, 'ok', now_us, count, sum}
end

-- Denied: how long until enough of the log expires (server-computed, exact for the log).
local function expiry_ms(score)
  return math.max(1, math.ceil((tonumber(score) + window_us - now_us) / 1000))
end
local retry, feasible = 1, true
local need_req = count + ahead_req + 1 - eff_rpm
if need_req > 0 then
  if need_req <= count then
    local e = redis.call('ZRANGE', log, need_req - 1, need_req - 1, 'WITHSCORES')
    retry = math.max(retry, expiry_ms(e[2]))
  else
    feasible = false
  end
end
local need_tok = sum + ahead_tok + tokens - eff_tpm
if need_tok > 0 then
  local got, start, found = 0, 0, false
  while not found do
    local chunk = redis.call('ZRANGE', log, start, start + 199, 'WITHSCORES')
    if #chunk == 0 then break end
    local ids = {}
    for i = 1, #chunk, 2 do ids[#ids + 1] = chunk[i] end
    local vals = redis.call('HMGET', tok, unpack(ids))
    for i = 1, #ids do
      got = got + tonumber(vals[i] or '0')
      if got >= need_tok then
        retry = math.max(retry, expiry_ms(chunk[2 * i]))
        found = true
        break
      end
    end
    start = start + 200
  end
  if not found then feasible = false end
end
if not feasible then
  -- Only the restart period ending, or waiters ahead being served, can make room: look again then.
  if eff_tpm < tpm or eff_rpm < rpm then
    retry = math.max(retry, restart_end - now_ms)
  else
    local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
    if last[2] then retry = math.max(retry, expiry_ms(last[2])) end
    retry = math.max(retry, math.floor(window_ms / 50))
  end
end

local reason = 'reserved'
if count + 1 > eff_rpm then
  reason = 'rpm'
elseif sum + tokens > eff_tpm then
  reason = 'tpm'
end
if register then
  redis.call('ZADD', waitq, 'NX', now_us, gid)
  redis.call('HSET', waiters, gid, tokens .. ':' .. (now_ms + retry + grace))
  extend(waitq, retry + grace + ttl)
  extend(waiters, retry + grace + ttl)
end
return deny(reason, retry)
