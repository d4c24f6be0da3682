-- limiter_acquire: admit one Gemini request against the RPM and TPM sliding windows, atomically.
--
-- KEYS[1]  zset   sliding log: "grant id:tokens charged" -> admission time (µs, Redis TIME)
-- KEYS[2]  string epoch: Redis-time ms when the restart period ends (missing + empty log = state lost)
-- KEYS[3]  zset   reservation queue: "waiter id:tokens:expires_ms" -> first-denial time (µs)
-- KEYS[4]  string cooldown until (Redis-time ms)
-- KEYS[5]  string gemini:rpm:current = grants in the log (ZCARD), kept live by INCR/DECRBY
-- KEYS[6]  string gemini:tpm:current = tokens charged over the log, kept live by INCRBY/DECRBY
-- KEYS[7]  hash   counters: grants, denials, denied_<reason>, waits, wait_ms_total
-- ARGV[1]  "grant id:tokens": the log member (the id is client-generated: a rerun of this call
--          after a lost reply is idempotent)
-- ARGV[2]  register: 1 = queue a reservation when denied (acquire), 0 = one-shot (try_acquire)
-- ARGV[3]  waited ms, added to the counters on grant
-- ARGV[4..11]  rpm tpm window_ms margin_ms restart_fraction grace_ms epoch_ttl_ms stats_ttl_ms
--          (restart_fraction negated by a caller that has seen live state: lost state then
--          pauses everyone for one window)
-- Returns  "granted retry_after_ms reason granted_at_us requests tokens" (one string: cheaper to
--          read than an array); granted 0/1; reason ok | rpm | tpm | reserved | cooldown;
--          requests/tokens = window usage after the call.
--
-- Cost: a grant that prunes nothing is 10 commands (3 of them writes). The tokens charged live in
-- the log member itself (no second structure to write, read on pruning, or delete), and the
-- running count and sum ARE the two contract keys, so publishing them costs no extra write: they
-- change (and are written) exactly when the window's usage changes, on a grant or a prune. Every
-- call checks KEYS[5] against ZCARD (O(1)) and that KEYS[6] exists; if either was lost or altered,
-- both are rebuilt from the log (O(n), only then). TTLs (window + margin) are renewed together
-- when the log starts or when the log has less than window + margin/2 left, so every key outlives
-- the last grant by more than a window.
--
-- Reservations: a denied acquire() queues (FIFO by first denial). A queued waiter must leave room
-- only for the waiters ahead of it; anyone not queued must leave room for all of them. So a large
-- request cannot be starved by a stream of small ones.

local log, waitq, rpmk, tpmk, stats = KEYS[1], KEYS[3], KEYS[5], KEYS[6], KEYS[7]
local member, register, waited = ARGV[1], ARGV[2], ARGV[3]
local gid, tokens = string.match(member, '^(%S+):(%d+)$')
tokens = tonumber(tokens)
local rpm, tpm, window_ms, margin = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_us = window_ms * 1000
local ttl = window_ms + margin

local function reply(granted, retry_ms, reason, at_us, count, sum)
  return string.format('%d %d %s %.0f %d %.0f', granted, retry_ms, reason, at_us, count, sum)
end

-- Idempotence: redis-py may rerun us after a lost reply; the first run's grant stands.
local prev = redis.call('ZSCORE', log, member)
if prev then
  local live = redis.call('MGET', rpmk, tpmk)
  return reply(1, 0, 'ok', tonumber(prev), tonumber(live[1]) or 0, tonumber(live[2]) or 0)
end

-- Tokens charged to one log member ("grant id:tokens"), and to a list of them.
local function cost(entry)
  return tonumber(string.match(entry, ':(%d+)$') or '0')
end
local function charged(list)
  local total = 0
  for i = 1, #list do total = total + cost(list[i]) end
  return total
end

-- flags: epoch, cooldown, live count, live sum (read before pruning, corrected by it below).
local flags = redis.call('MGET', KEYS[2], KEYS[4], rpmk, tpmk)

-- Prune what left the window (O(expired)); usually one ZRANGEBYSCORE that finds nothing.
local cutoff = now_us - window_us
local removed, freed = 0, 0
local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
local old = {}
if oldest[2] and tonumber(oldest[2]) <= cutoff then
  old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, 500)
end
while #old > 0 do
  freed = freed + charged(old)
  redis.call('ZREMRANGEBYRANK', log, 0, #old - 1)
  removed = removed + #old
  if #old < 500 then break end
  old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, 500)
end

local count = redis.call('ZCARD', log)
local live_count, sum = tonumber(flags[3]) or 0, tonumber(flags[4])
if count == 0 then
  -- An empty window holds nothing: correct whatever a stale key still says.
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
  -- The live keys were lost (flush of one key, eviction, an outside write): rebuild from the log.
  sum = 0
  for start = 0, count - 1, 1000 do
    sum = sum + charged(redis.call('ZRANGE', log, start, start + 999))
  end
  redis.call('SET', rpmk, count, 'PX', ttl)
  redis.call('SET', tpmk, string.format('%.0f', sum), 'PX', ttl)
end

local fraction, grace, epoch_ttl, stats_ttl = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], ARGV[11]
-- A negative fraction says the caller has seen live state before (see below).
local seen_state = fraction < 0
fraction = math.abs(fraction)

-- Lost state (flush, restart without persistence) shows as no epoch and an empty log: for one
-- window admit only a fraction of each limit, since grants made just before the loss may still
-- count at Gemini. When the caller had seen live state before (negative fraction), the loss is
-- certain and the window before it may have been full: then nobody calls for a whole
-- window (a shared cooldown), the only choice that cannot exceed the quota. An epoch that lapsed
-- while the log was busy is simply renewed.
local restart_end = tonumber(flags[1])
if not restart_end then
  restart_end = 0
  if count == 0 and fraction < 1 then
    restart_end = now_ms + window_ms
    if seen_state and (tonumber(flags[2]) or 0) < restart_end then
      redis.call('SET', KEYS[4], restart_end, 'PX', window_ms + margin)
      flags[2] = tostring(restart_end)
    end
  end
  redis.call('SET', KEYS[2], restart_end, 'PX', epoch_ttl)
elseif count == 0 then
  redis.call('PEXPIRE', KEYS[2], epoch_ttl)
end
local eff_rpm, eff_tpm = rpm, tpm
if now_ms < restart_end then
  eff_rpm = math.max(1, math.floor(rpm * fraction))
  eff_tpm = math.max(1, math.floor(tpm * fraction))
end

-- Reservations ahead of this request (all of them if it is not queued); drop lapsed ones.
local ahead_req, ahead_tok, all_req, all_tok = 0, 0, 0, 0
local own, own_score = nil, nil
local queue = redis.call('ZRANGE', waitq, 0, 999, 'WITHSCORES')
for i = 1, #queue, 2 do
  local entry = queue[i]
  local w, wt, wexp = string.match(entry, '^(.+):(%d+):(%d+)$')
  if not w or tonumber(wexp) < now_ms then
    redis.call('ZREM', waitq, entry)
  elseif w == gid then
    own, own_score = entry, queue[i + 1]
  else
    if not own then
      ahead_req, ahead_tok = ahead_req + 1, ahead_tok + tonumber(wt)
    end
    all_req, all_tok = all_req + 1, all_tok + tonumber(wt)
  end
end
if not own then ahead_req, ahead_tok = all_req, all_tok end

-- Shared cooldown after a 429: nobody calls Gemini until it ends (a queued waiter keeps its place).
local until_ms = tonumber(flags[2])
local cooling = until_ms and now_ms < until_ms

if not cooling and count + ahead_req + 1 <= eff_rpm and sum + ahead_tok + tokens <= eff_tpm then
  redis.call('ZADD', log, now_us, member)
  local fresh = count == 0
  count = redis.call('INCR', rpmk)
  sum = redis.call('INCRBY', tpmk, tokens)
  -- Renew every TTL together: when the log starts, or when less than window + margin/2 is left.
  if fresh or redis.call('PTTL', log) < ttl - margin / 2 then
    redis.call('PEXPIRE', log, ttl)
    redis.call('PEXPIRE', rpmk, ttl)
    redis.call('PEXPIRE', tpmk, ttl)
  end
  if own then redis.call('ZREM', waitq, own) end
  if redis.call('HINCRBY', stats, 'grants', 1) % 256 == 1 then
    redis.call('PEXPIRE', stats, stats_ttl)
  end
  if waited ~= '0' then
    redis.call('HINCRBY', stats, 'waits', 1)
    redis.call('HINCRBY', stats, 'wait_ms_total', waited)
  end
  return string.format('1 0 ok %.0f %d %.0f', now_us, count, sum)
end

-- Denied (the closures below are only built on this slower path).
local function count_stat(field)
  if redis.call('HINCRBY', stats, field, 1) % 256 == 1 then
    redis.call('PEXPIRE', stats, stats_ttl)
  end
end

-- Never shorten a TTL another waiter's entry relies on.
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function queue_until(expires_ms)
  local entry = gid .. ':' .. tokens .. ':' .. expires_ms
  if own then
    redis.call('ZREM', waitq, own)
    redis.call('ZADD', waitq, own_score, entry)
  else
    redis.call('ZADD', waitq, now_us, entry)
  end
  extend(waitq, expires_ms - now_ms + ttl)
end

local function deny(reason, retry_ms)
  count_stat('denials')
  count_stat('denied_' .. reason)
  return reply(0, retry_ms, reason, 0, count, sum)
end

if cooling then
  if own then queue_until(until_ms + grace) end
  return deny('cooldown', until_ms - now_ms)
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
    for i = 1, #chunk, 2 do
      got = got + cost(chunk[i])
      if got >= need_tok then
        retry = math.max(retry, expiry_ms(chunk[i + 1]))
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
if register == '1' then queue_until(now_ms + retry + grace) end
return deny(reason, retry)
