-- The limiter script as shipped before the round-2 review fixes (commit a9608f4), helpers
-- expanded: tests run it beside the current one to check a rolling upgrade.
-- limiter_acquire: admit one Gemini request against the RPM and TPM sliding windows, atomically.
--
-- KEYS[1] zset log      KEYS[2] zset cum       KEYS[3] zset waiting   KEYS[4] hash waiting:until
-- KEYS[5] string seq    KEYS[6] string epoch   KEYS[7] string cooldown:until
-- KEYS[8] string cooldown:reason   KEYS[9] gemini:rpm:current   KEYS[10] gemini:tpm:current
-- KEYS[11] hash counters (grants, denials, denied_<reason>, waits, wait_ms_total, state_losses)
--          (each structure is described in the included helper that owns it, and in keys.py)
-- ARGV[1]  "grant id:tokens": the log member; the id is client-made, so a rerun of this call
--          after a lost reply finds its grant and returns it (idempotent)
-- ARGV[2]  register: 1 = keep a FIFO reservation when denied (acquire), 0 = one-shot (try_acquire)
-- ARGV[3]  waited ms (counters)   ARGV[4] highest seq this limiter saw   ARGV[5] Redis ms of that
-- ARGV[6]  1 = this grant id may have been sent before with an unknown outcome: look it up
-- ARGV[7..15]  rpm tpm window_ms margin_ms restart_fraction grace_ms life_ms stats_ttl_ms reserved
-- Returns  "granted retry_ms reason granted_at_us requests tokens seq now_ms" (one string: cheaper
--          to read than an array); reason ok | rpm | tpm | reserved | cooldown; requests/tokens =
--          the window's usage after the call; seq = the grant counter; now_ms = Redis time.
--
-- A request fits when requests in the window + those reserved ahead + 1 <= RPM and tokens in the
-- window + those reserved ahead + its estimate <= TPM, no cooldown runs, and (restart period) a
-- fraction of each limit. Every call: O(log n + log w) in the log size n and queue length w, plus
-- small constants (PRUNE_MAX, reserved). An uncontended grant is 12 Redis commands.

-- limiter_lib_window: helpers for the sliding log and its live keys. Not a script: pasted into
-- limiter_acquire and limiter_status where they say `--! include limiter_lib_window`.
--
-- k.log  zset "grant id:tokens charged" -> admission µs (Redis TIME); a settle rewrites tokens
-- k.cum  zset "grant id:admission µs:estimate" -> estimated tokens granted before it: the same
--        grants as the log in the same order (added and pruned together), indexed by running
--        total so "when will N tokens have left" is one O(log n) lookup (limiter_lib_hint)
-- k.rpm / k.tpm  gemini:rpm:current / gemini:tpm:current: count and token sum over the log
--
-- window_prune(k, live_count, live_sum, cutoff_us, ttl) -> count, sum
--   live_count/live_sum: the two live keys as read (nil when missing). Drops at most PRUNE_MAX
--   grants admitted at or before cutoff_us from log and cum and takes them off the live keys:
--   each grant leaves once, so O(1) amortised per grant and O(log n + PRUNE_MAX) per call. Grants
--   left over by the cap stay counted until a later call (conservative: never an over-admission).
--   A live key lost or altered (eviction, a flushed key, an outside write) is rebuilt from the
--   log: O(n), only after such damage.
-- cum_rebuild(k, count, ttl) -> running total: cum rebuilt from the log (O(n): only when the
--   counter that holds the running total was lost, or cum was damaged)
-- cum_check(k, count, ttl): rebuilds cum when its size differs from the log's; called before cum
--   is read (a token retry hint), not on every grant.

local PRUNE_MAX = 256

-- Tokens in a member ending in ":<tokens>" (log and cum members both do).
local function cost(entry)
  return tonumber(string.match(entry, ':(%d+)$') or '0')
end

local function cum_rebuild(k, count, ttl)
  redis.call('DEL', k.cum)
  local before = 0
  for start = 0, count - 1, 1000 do
    local part = redis.call('ZRANGE', k.log, start, start + 999, 'WITHSCORES')
    for i = 1, #part, 2 do
      local gid, tok = string.match(part[i], '^(.*):(%d+)$')
      local at = string.format('%.0f', tonumber(part[i + 1]))
      redis.call('ZADD', k.cum, before, gid .. ':' .. at .. ':' .. tok)
      before = before + tonumber(tok)
    end
  end
  if count > 0 then redis.call('PEXPIRE', k.cum, ttl) end
  return before
end

local function cum_check(k, count, ttl)
  if redis.call('ZCARD', k.cum) ~= count then cum_rebuild(k, count, ttl) end
end

local function window_prune(k, live_count, live_sum, cutoff_us, ttl)
  local removed, freed = 0, 0
  local oldest = redis.call('ZRANGE', k.log, 0, 0, 'WITHSCORES')
  if oldest[2] and tonumber(oldest[2]) <= cutoff_us then
    local old = redis.call('ZRANGEBYSCORE', k.log, '-inf', cutoff_us, 'LIMIT', 0, PRUNE_MAX)
    for i = 1, #old do freed = freed + cost(old[i]) end
    removed = #old
    redis.call('ZREMRANGEBYRANK', k.log, 0, removed - 1)
    redis.call('ZREMRANGEBYRANK', k.cum, 0, removed - 1)
  end
  local count, sum = redis.call('ZCARD', k.log), live_sum
  if count == 0 then
    -- An empty window holds nothing: correct whatever a stale key still says.
    if (live_count or 0) ~= 0 or (sum and sum ~= 0) then
      redis.call('SET', k.rpm, 0, 'PX', ttl)
      redis.call('SET', k.tpm, 0, 'PX', ttl)
    end
    sum = 0
  elseif live_count and sum and live_count - removed == count then
    if removed > 0 then
      redis.call('DECRBY', k.rpm, removed)
      sum = redis.call('DECRBY', k.tpm, freed)
    end
  else
    sum = 0
    for start = 0, count - 1, 1000 do
      local part = redis.call('ZRANGE', k.log, start, start + 999)
      for i = 1, #part do sum = sum + cost(part[i]) end
    end
    redis.call('SET', k.rpm, count, 'PX', ttl)
    redis.call('SET', k.tpm, string.format('%.0f', sum), 'PX', ttl)
  end
  return count, sum
end

-- limiter_lib_state: is the shared state the one this caller saw? Not a script: pasted into
-- limiter_acquire where it says `--! include limiter_lib_state`.
--
-- k.seq  gemini:limiter:seq: "grants tokens": grants ever admitted by this state (only grows)
--        and their estimated tokens (the running total the next cum entry starts at)
-- k.epoch  Redis-time ms the restart period ends (set only for that period)
-- k.cool / k.reason / k.stats  the shared cooldown, its reason, the counters
-- c: config and flags (window_ms, fraction, life_ms; cool_until and restart_end are updated)
--
-- state_keep(k, c)  called by a denial: keeps the counter alive life_ms/2 past it, O(1) (a grant
--   rewrites the counter with a whole life_ms)
-- state_check(k, c, seq, seen_seq, seen_ms, now_ms) -> the counter to go on from
--   seq: the grant counter as read (nil when missing); seen_seq, seen_ms: the highest counter this
--   limiter instance saw and the Redis time of that reply (0 0 for a fresh instance).
--   The counter outlives every call by at least life_ms/2 (rewritten by every grant, renewed by
--   any denial that finds less left), so a caller's memory younger than that is comparable.
--   Lost or rolled back: the caller saw a higher counter less than life_ms/2 ago, so grants it
--   knows of are missing (restart without persistence, flush, restore of an older snapshot,
--   failover to a lagging replica), and they may still count at Gemini for up to one window:
--   nobody is admitted for one window (shared cooldown, never shortened), whatever the restart
--   fraction; the counter is set back to what the caller saw, so callers that saw less do not
--   pause again. Fresh (no counter, nothing to compare with: a first start, every process
--   restarted with Redis, an instance idle longer than life_ms/2): a new counter and, for one
--   window, restart_fraction of each limit (1 = the whole limit, no restart period).

local function state_check(k, c, seq, seen_seq, seen_ms, now_ms)
  if seen_seq > (seq or 0) and now_ms - seen_ms < c.life_ms / 2 then
    local until_ms = now_ms + c.window_ms
    if c.cool_until < until_ms then
      redis.call('SET', k.cool, until_ms, 'PX', c.window_ms)
      redis.call('SET', k.reason, 'limiter state lost or rolled back', 'PX', c.window_ms)
      c.cool_until = until_ms
    end
    redis.call('SET', k.seq, string.format('%.0f %.0f', seen_seq, c.cum_total), 'PX', c.life_ms)
    redis.call('HINCRBY', k.stats, 'state_losses', 1)
    return seen_seq
  end
  if not seq then
    redis.call('SET', k.seq, string.format('0 %.0f', c.cum_total), 'PX', c.life_ms)
    if c.fraction < 1 then
      c.restart_end = now_ms + c.window_ms
      redis.call('SET', k.epoch, c.restart_end, 'PX', c.window_ms)
    end
    return 0
  end
  return seq
end

local function state_keep(k, c)
  if redis.call('PTTL', k.seq) < c.life_ms / 2 then redis.call('PEXPIRE', k.seq, c.life_ms) end
end

-- limiter_lib_queue: the FIFO reservation queue. Not a script: pasted into limiter_acquire
-- where it says `--! include limiter_lib_queue`.
--
-- k.waitq   zset "waiter id:tokens" -> first-denial µs: FIFO order. A waiter keeps its place for
--           as long as it keeps asking (one acquire call, however long it waits).
-- k.wuntil  hash waiter id -> Redis-time ms its reservation lapses unless it asks again
--
-- Only the first `reserved` waiters hold room: one of them leaves room for those ahead of it;
-- everyone else (newcomers, try_acquire, waiters further back) for all of them. A waiter further
-- back moves up as those ahead are served, so nobody starves, and a call reads at most
-- `reserved` entries: O(log w + reserved) whatever the queue's length w.
--
-- queue_ahead(k, own, now_ms, reserved) -> ahead_req, ahead_tok, queued, position
--   Room to leave (requests, tokens), whether `own` is queued, and how many waiters are ahead
--   of it in the whole queue (its rank; the queue's length if not queued): for the retry hint.
--   Drops lapsed reservations among the first `reserved` (never the caller's own).
-- queue_keep(k, own, gid, queued, now_us, until_ms, keep_ms)  join at the back or keep the place
-- queue_leave(k, own, gid)                                     granted: leave the queue

local function queue_ahead(k, own, now_ms, reserved)
  local top = redis.call('ZRANGE', k.waitq, 0, reserved - 1)
  if #top == 0 then return 0, 0, false, 0 end
  local ids, toks = {}, {}
  for i = 1, #top do
    local id, t = string.match(top[i], '^(.*):(%d+)$')
    ids[i], toks[i] = id or top[i], tonumber(t) or 0
  end
  local untils = redis.call('HMGET', k.wuntil, unpack(ids))
  local req, tok = 0, 0
  for i = 1, #top do
    if top[i] == own then return req, tok, true, req end
    local u = tonumber(untils[i])
    if not u or u < now_ms then
      redis.call('ZREM', k.waitq, top[i])
      redis.call('HDEL', k.wuntil, ids[i])
    else
      req, tok = req + 1, tok + toks[i]
    end
  end
  if #top < reserved then return req, tok, false, req end
  local rank = redis.call('ZRANK', k.waitq, own)
  if rank then return req, tok, true, rank end
  return req, tok, false, redis.call('ZCARD', k.waitq)
end

local function queue_keep(k, own, gid, queued, now_us, until_ms, keep_ms)
  if not queued then redis.call('ZADD', k.waitq, now_us, own) end
  redis.call('HSET', k.wuntil, gid, until_ms)
  -- Never shorten a TTL another waiter's entry relies on.
  if redis.call('PTTL', k.waitq) < keep_ms then redis.call('PEXPIRE', k.waitq, keep_ms) end
  if redis.call('PTTL', k.wuntil) < keep_ms then redis.call('PEXPIRE', k.wuntil, keep_ms) end
end

local function queue_leave(k, own, gid)
  redis.call('ZREM', k.waitq, own)
  redis.call('HDEL', k.wuntil, gid)
end

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


local k = {log = KEYS[1], cum = KEYS[2], waitq = KEYS[3], wuntil = KEYS[4], seq = KEYS[5],
  epoch = KEYS[6], cool = KEYS[7], reason = KEYS[8], rpm = KEYS[9], tpm = KEYS[10],
  stats = KEYS[11]}
local member, register, waited = ARGV[1], ARGV[2], ARGV[3]
local gid, tokens = string.match(member, '^(%S+):(%d+)$')
tokens = tonumber(tokens)
local c = {rpm = tonumber(ARGV[7]), tpm = tonumber(ARGV[8]), window_ms = tonumber(ARGV[9]),
  margin = tonumber(ARGV[10]), fraction = tonumber(ARGV[11]), grace = tonumber(ARGV[12]),
  life_ms = tonumber(ARGV[13]), stats_ttl = tonumber(ARGV[14]), reserved = tonumber(ARGV[15])}

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local window_us = c.window_ms * 1000
local ttl = c.window_ms + c.margin

local function reply(granted, retry_ms, reason, at_us, count, sum, seq)
  return string.format('%d %d %s %.0f %d %.0f %.0f %.0f', granted, retry_ms, reason, at_us,
    count, sum, seq, now_ms)
end

local function count_stat(field, by)
  if redis.call('HINCRBY', k.stats, field, by or 1) % 256 == 1 then
    redis.call('PEXPIRE', k.stats, c.stats_ttl)
  end
end

-- Idempotence: redis-py may rerun us after a lost reply; the first run's grant stands.
if ARGV[6] == '1' then
  local prev = redis.call('ZSCORE', k.log, member)
  if prev then
    local live = redis.call('MGET', k.rpm, k.tpm, k.seq)
    return reply(1, 0, 'ok', tonumber(prev), tonumber(live[1]) or 0, tonumber(live[2]) or 0,
      tonumber(string.match(live[3] or '0', '^%d+')))
  end
end

local f = redis.call('MGET', k.seq, k.epoch, k.cool, k.rpm, k.tpm)
local count, sum = window_prune(k, tonumber(f[4]), tonumber(f[5]), now_us - window_us, ttl)
c.cool_until, c.restart_end = tonumber(f[3]) or 0, tonumber(f[2]) or 0
local seq_read, total_read = string.match(f[1] or '', '^(%d+) (%d+)$')
c.cum_total = tonumber(total_read)
if not c.cum_total then c.cum_total = cum_rebuild(k, count, ttl) end  -- counter lost: realign
local seq = state_check(k, c, tonumber(seq_read), tonumber(ARGV[4]), tonumber(ARGV[5]), now_ms)
local eff_rpm, eff_tpm = c.rpm, c.tpm
if now_ms < c.restart_end then
  eff_rpm = math.max(1, math.floor(c.rpm * c.fraction))
  eff_tpm = math.max(1, math.floor(c.tpm * c.fraction))
end
local ahead_req, ahead_tok, queued, position = queue_ahead(k, member, now_ms, c.reserved)
local cooling = now_ms < c.cool_until

if not cooling and count + ahead_req + 1 <= eff_rpm and sum + ahead_tok + tokens <= eff_tpm then
  redis.call('ZADD', k.log, now_us, member)
  redis.call('ZADD', k.cum, c.cum_total, gid .. ':' .. string.format('%.0f', now_us) .. ':' .. tokens)
  count = redis.call('INCR', k.rpm)
  sum = redis.call('INCRBY', k.tpm, tokens)
  seq = seq + 1  -- the counter and running total in one write, which also renews its lifetime
  redis.call('SET', k.seq, string.format('%.0f %.0f', seq, c.cum_total + tokens), 'PX', c.life_ms)
  -- Renew every TTL together: when the log starts, or when less than window + margin/2 is left.
  if count == 1 or redis.call('PTTL', k.log) < ttl - c.margin / 2 then
    for _, key in ipairs({k.log, k.cum, k.rpm, k.tpm}) do redis.call('PEXPIRE', key, ttl) end
  end
  if queued then queue_leave(k, member, gid) end
  count_stat('grants')
  if waited ~= '0' then
    redis.call('HINCRBY', k.stats, 'waits', 1)
    redis.call('HINCRBY', k.stats, 'wait_ms_total', waited)
  end
  return reply(1, 0, 'ok', now_us, count, sum, seq)
end

-- Denied: why, and when to look again (server-computed from the log).
local reason, retry = 'reserved', nil
if cooling then
  reason, retry = 'cooldown', c.cool_until - now_ms
else
  if count + 1 > eff_rpm then
    reason = 'rpm'
  elseif sum + tokens > eff_tpm then
    reason = 'tpm'
  end
  -- Requests: the caller's place in the whole queue; tokens: the room reserved ahead of it.
  local need_req = count + math.max(ahead_req, position) + 1 - eff_rpm
  retry = retry_hint(k, need_req, sum + ahead_tok + tokens - eff_tpm, count, now_us, window_us,
    ttl)
  if not retry and now_ms < c.restart_end then
    retry = c.restart_end - now_ms
  elseif not retry then
    local newest = redis.call('ZRANGE', k.log, -1, -1, 'WITHSCORES')
    retry = math.floor(c.window_ms / 50)
    if newest[2] then retry = math.max(retry, expiry_ms(newest[2], now_us, window_us)) end
  end
end
if register == '1' then
  local until_ms = now_ms + retry + c.grace
  queue_keep(k, member, gid, queued, now_us, until_ms, until_ms - now_ms + ttl)
end
state_keep(k, c)
count_stat('denials')
count_stat('denied_' .. reason)
return reply(0, retry, reason, 0, count, sum, seq)
