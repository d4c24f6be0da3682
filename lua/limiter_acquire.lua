-- limiter_acquire: admit one Gemini request against the RPM and TPM sliding windows, atomically.
--
-- KEYS[1]  zset   sliding log: grant id -> admission time (µs, Redis TIME)
-- KEYS[2]  hash   grant id -> tokens charged; field '~sum' = their running sum (kept incrementally)
-- KEYS[3]  string epoch: Redis-time ms when the restart period ends (missing + empty log = state lost)
-- KEYS[4]  zset   reservation queue: "waiter id:tokens:expires_ms" -> first-denial time (µs)
-- KEYS[5]  string cooldown until (Redis-time ms)
-- KEYS[6]  string gemini:rpm:current    KEYS[7] string gemini:tpm:current
-- KEYS[8]  hash   counters: grants, denials, denied_<reason>, waits, wait_ms_total
-- ARGV[1]  grant id (client-generated: a rerun of this call after a lost reply is idempotent)
-- ARGV[2]  "tokens register waited_ms": register 1 = queue a reservation when denied (acquire),
--          0 = one-shot (try_acquire); waited_ms is added to the counters on grant
-- ARGV[3]  "rpm tpm window_ms restart_fraction grace_ms epoch_ttl_ms stats_ttl_ms margin_ms"
-- Returns  "granted retry_after_ms reason granted_at_us requests tokens" (one string: cheaper to
--          read than an array); granted 0/1; reason ok | rpm | tpm | reserved | cooldown;
--          requests/tokens = window usage after the call.
--
-- Reservations: a denied acquire() queues (FIFO by first denial). A queued waiter must leave room
-- only for the waiters ahead of it; anyone not queued must leave room for all of them. So a large
-- request cannot be starved by a stream of small ones.

local log, tok, epochk, waitq, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[8]
local gid = ARGV[1]

local function reply(granted, retry_ms, reason, at_us, count, sum)
  return string.format('%d %d %s %.0f %d %.0f', granted, retry_ms, reason, at_us, count, sum)
end
local tokens, register, waited = string.match(ARGV[2], '^(%d+) (%d) (%d+)$')
tokens, register, waited = tonumber(tokens), register == '1', tonumber(waited)
local c = {}
for v in string.gmatch(ARGV[3], '%S+') do c[#c + 1] = tonumber(v) end
local rpm, tpm, window_ms, fraction, grace, epoch_ttl, stats_ttl, margin =
  c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_us = window_ms * 1000
local ttl = window_ms + margin

-- Idempotence: redis-py may rerun us after a lost reply; the first run's grant stands.
local prev = redis.call('ZSCORE', log, gid)
if prev then
  local held = tonumber(redis.call('HGET', tok, '~sum') or '0')
  return reply(1, 0, 'ok', tonumber(prev), redis.call('ZCARD', log), held)
end

-- Prune what left the window, subtracting its tokens from the running sum (O(expired)).
local cutoff = now_us - window_us
local sum
while true do
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, 500)
  if #old == 0 then break end
  local vals = redis.call('HMGET', tok, unpack(old))
  local freed = 0
  for i = 1, #old do
    if vals[i] then freed = freed + tonumber(vals[i]) end
  end
  redis.call('HDEL', tok, unpack(old))
  redis.call('ZREM', log, unpack(old))
  sum = redis.call('HINCRBY', tok, '~sum', -freed)
end
local count = redis.call('ZCARD', log)
if count == 0 then
  sum = 0  -- an empty log holds no tokens: drop whatever a half-expired hash still says
  redis.call('DEL', tok)
elseif not sum then
  sum = tonumber(redis.call('HGET', tok, '~sum') or '0')
end

local flags = redis.call('MGET', epochk, KEYS[5])
-- Lost state (flush, restart without persistence) shows as no epoch and an empty log: for one
-- window admit only a fraction of each limit, since grants made just before the loss may still
-- count at Gemini. An epoch that lapsed while the log was busy is simply renewed.
local restart_end = tonumber(flags[1])
if not restart_end then
  restart_end = 0
  if count == 0 and fraction < 1 then restart_end = now_ms + window_ms end
  redis.call('SET', epochk, restart_end, 'PX', epoch_ttl)
elseif count == 0 then
  redis.call('PEXPIRE', epochk, epoch_ttl)
end
local eff_rpm, eff_tpm = rpm, tpm
if now_ms < restart_end then
  eff_rpm = math.max(1, math.floor(rpm * fraction))
  eff_tpm = math.max(1, math.floor(tpm * fraction))
end

local function count_stat(field)
  if redis.call('HINCRBY', stats, field, 1) % 256 == 1 then redis.call('PEXPIRE', stats, stats_ttl) end
end

local function publish()
  redis.call('SET', KEYS[6], count, 'PX', ttl)
  redis.call('SET', KEYS[7], sum, 'PX', ttl)
end

-- Never shorten a TTL another waiter's entry relies on.
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- Reservations ahead of this request (all of them if it is not queued); drop lapsed ones.
local ahead_req, ahead_tok, all_req, all_tok = 0, 0, 0, 0
local own, own_score = nil, nil
local queue = redis.call('ZRANGE', waitq, 0, 999, 'WITHSCORES')
for i = 1, #queue, 2 do
  local member = queue[i]
  local w, wt, wexp = string.match(member, '^(.+):(%d+):(%d+)$')
  if not w or tonumber(wexp) < now_ms then
    redis.call('ZREM', waitq, member)
  elseif w == gid then
    own, own_score = member, queue[i + 1]
  else
    if not own then
      ahead_req, ahead_tok = ahead_req + 1, ahead_tok + tonumber(wt)
    end
    all_req, all_tok = all_req + 1, all_tok + tonumber(wt)
  end
end
if not own then ahead_req, ahead_tok = all_req, all_tok end

local function queue_until(expires_ms)
  local member = gid .. ':' .. tokens .. ':' .. expires_ms
  if own then
    redis.call('ZREM', waitq, own)
    redis.call('ZADD', waitq, own_score, member)
  else
    redis.call('ZADD', waitq, now_us, member)
  end
  extend(waitq, expires_ms - now_ms + ttl)
end

local function deny(reason, retry_ms)
  count_stat('denials')
  count_stat('denied_' .. reason)
  publish()
  return reply(0, retry_ms, reason, 0, count, sum)
end

-- Shared cooldown after a 429: nobody calls Gemini until it ends (a queued waiter keeps its place).
local until_ms = tonumber(flags[2])
if until_ms and now_ms < until_ms then
  if own then queue_until(until_ms + grace) end
  return deny('cooldown', until_ms - now_ms)
end

if count + ahead_req + 1 <= eff_rpm and sum + ahead_tok + tokens <= eff_tpm then
  redis.call('ZADD', log, now_us, gid)
  redis.call('HSET', tok, gid, tokens)
  sum = redis.call('HINCRBY', tok, '~sum', tokens)
  count = count + 1
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', tok, ttl)
  if own then redis.call('ZREM', waitq, own) end
  count_stat('grants')
  if waited > 0 then
    count_stat('waits')
    redis.call('HINCRBY', stats, 'wait_ms_total', waited)
  end
  publish()
  return reply(1, 0, 'ok', now_us, count, sum)
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
  if now_ms < restart_end then
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
if register then queue_until(now_ms + retry + grace) end
return deny(reason, retry)
