-- limiter_acquire: admit one Gemini request against the RPM and TPM sliding windows, atomically.
--
-- KEYS[1] zset log      KEYS[2] zset cum       KEYS[3] zset waiting   KEYS[4] hash waiting:until
-- KEYS[5] string seq    KEYS[6] string epoch   KEYS[7] string cooldown:until
-- KEYS[8] string cooldown:reason   KEYS[9] gemini:rpm:current   KEYS[10] gemini:tpm:current
-- KEYS[11] hash counters (grants, denials, denied_<reason>, waits, wait_ms_total, state_losses)
-- KEYS[12] string gemini:limiter:state
--          (each structure is described in the included helper that owns it, and in keys.py)
-- ARGV[1]  "grant id:tokens": the log member; the id is client-made, so a rerun of this call
--          after a lost reply finds its grant and returns it (idempotent)
-- ARGV[2]  register: 1 = keep a FIFO reservation when denied (acquire), 0 = one-shot (try_acquire)
-- ARGV[3]  waited ms (counters)   ARGV[4] highest seq this limiter saw   ARGV[5] Redis ms of that
-- ARGV[6]  "grant id admission µs" of this limiter's newest grant ("- 0": none yet)
-- ARGV[7]  1 = this grant id may have been sent before with an unknown outcome: look it up
-- ARGV[8..16]  rpm tpm window_ms margin_ms restart_fraction grace_ms life_ms stats_ttl_ms reserved
-- Returns  "granted retry_ms reason granted_at_us requests tokens seq now_ms lost" (one string:
--          cheaper to read than an array); reason ok | rpm | tpm | reserved | cooldown;
--          requests/tokens = the window's usage after the call; seq = the grant counter;
--          now_ms = Redis time; lost = 1 when this call found the state lost or rolled back (the
--          caller forgets its newest grant: it was counted once).
--
-- A request fits when requests in the window + those reserved ahead + 1 <= RPM and tokens in the
-- window + those reserved ahead + its estimate <= TPM, no cooldown runs, and (restart period) a
-- fraction of each limit. Every call: O(log n + log w) in the log size n and queue length w, plus
-- small constants (PRUNE_MAX, reserved, HINT_SCAN). An uncontended grant is 14 Redis commands.

--! include limiter_lib_window
--! include limiter_lib_state
--! include limiter_lib_queue
--! include limiter_lib_hint

local k = {log = KEYS[1], cum = KEYS[2], waitq = KEYS[3], wuntil = KEYS[4], seq = KEYS[5],
  epoch = KEYS[6], cool = KEYS[7], reason = KEYS[8], rpm = KEYS[9], tpm = KEYS[10],
  stats = KEYS[11], state = KEYS[12]}
local member, register, waited = ARGV[1], ARGV[2], ARGV[3]
local gid, tokens = string.match(member, '^(%S+):(%d+)$')
tokens = tonumber(tokens)
local seen = {seq = tonumber(ARGV[4]), ms = tonumber(ARGV[5])}
local mine_gid, mine_at = string.match(ARGV[6], '^(%S+) (%d+)$')
local mine = {gid = mine_gid, at = tonumber(mine_at)}
local c = {rpm = tonumber(ARGV[8]), tpm = tonumber(ARGV[9]), window_ms = tonumber(ARGV[10]),
  margin = tonumber(ARGV[11]), fraction = tonumber(ARGV[12]), grace = tonumber(ARGV[13]),
  life_ms = tonumber(ARGV[14]), stats_ttl = tonumber(ARGV[15]), reserved = tonumber(ARGV[16])}

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local ttl = c.window_ms + c.margin

local function reply(granted, retry_ms, reason, at_us, count, sum, seq, lost)
  return string.format('%d %d %s %.0f %d %.0f %.0f %.0f %d', granted, retry_ms, reason, at_us,
    count, sum, seq, now_ms, lost and 1 or 0)
end

-- Counters never fail a call (a key of the wrong type is left as it is).
local function count_stat(field, by)
  local n = redis.pcall('HINCRBY', k.stats, field, by or 1)
  if type(n) == 'number' and n % 256 == 1 then redis.pcall('PEXPIRE', k.stats, c.stats_ttl) end
end

-- Idempotence: redis-py may rerun us after a lost reply; the first run's grant stands.
if ARGV[7] == '1' then
  local prev = redis.call('ZSCORE', k.log, member)
  if prev then
    local live = redis.call('MGET', k.seq, k.state)
    return reply(1, 0, 'ok', tonumber(prev), redis.call('ZCARD', k.log),
      state_read(live[2]).sum or 0, counter_read(live[1]) or 0, false)
  end
end

local f = redis.call('MGET', k.seq, k.epoch, k.cool, k.rpm, k.tpm, k.state)
local seq, total = counter_read(f[1])
local st = state_read(f[6])
local state_found = f[6] and true or false  -- MGET gives false for a missing key
c.cool_until, c.restart_end = tonumber(f[3]) or 0, tonumber(f[2]) or 0
-- grants count over the longest window a recent caller uses: nobody prunes what others count
local window_us = count_window_us(st, c.window_ms * 1000, now_ms)
local cutoff_us = now_us - window_us
local count, sum, changed, was_count, was_sum = window_prune(k, st.sum, cutoff_us, f[4], f[5])
st.sum, st.dirty = sum, changed
local lost, first
lost, seq, first = state_check(k, c, st, seq, seen, mine, count, now_us, cutoff_us,
  state_found)
if first then
  st.sum = log_sum(k, count)  -- what the log still holds
  sum = st.sum
end
if first or total == nil or not state_found then
  -- the index realigned with the log after a loss, a lost counter, or an earlier version's state
  total, st.dirty = cum_rebuild(k, count, ttl), true
end
local eff_rpm, eff_tpm = c.rpm, c.tpm
if now_ms < c.restart_end then
  eff_rpm = math.max(1, math.floor(c.rpm * c.fraction))
  eff_tpm = math.max(1, math.floor(c.tpm * c.fraction))
end
local ahead_req, ahead_tok, queued, position = queue_ahead(k, member, now_ms, c.reserved, eff_tpm)
local cooling = now_ms < c.cool_until

if not cooling and count + ahead_req + 1 <= eff_rpm and sum + ahead_tok + tokens <= eff_tpm then
  redis.call('ZADD', k.log, now_us, member)
  redis.call('ZADD', k.cum, total, cum_member(gid, now_us, tokens))
  st.sum, st.gid, st.at = sum + tokens, gid, now_us
  note_window(st, c.window_ms, now_ms)  -- this caller's window counts until its grants leave
  state_write(k, c, st, seq + 1, total + tokens)  -- state and counter: their whole lifetime
  mirror(k, f[4], f[5], was_count, was_sum, count + 1, st.sum, ttl)
  -- Renew every TTL together: when the log starts, or when less than window + margin/2 is left.
  if count == 0 or redis.call('PTTL', k.log) < ttl - c.margin / 2 then
    redis.call('PEXPIRE', k.log, ttl)
    redis.call('PEXPIRE', k.cum, ttl)
    redis.pcall('PEXPIRE', k.rpm, ttl)
    redis.pcall('PEXPIRE', k.tpm, ttl)
  end
  if queued then queue_leave(k, member, gid) end
  count_stat('grants')
  if waited ~= '0' then
    count_stat('waits')
    count_stat('wait_ms_total', tonumber(waited))
  end
  return reply(1, 0, 'ok', now_us, count + 1, st.sum, seq + 1, false)
end

-- Denied: why, and when to look again (server-computed from the log).
mirror(k, f[4], f[5], was_count, was_sum, count, sum, ttl)
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
  retry = retry_hint(k, need_req, sum + ahead_tok + tokens - eff_tpm, count, sum, now_us,
    window_us, ttl)
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
if st.dirty then state_write(k, c, st, seq, total) else state_keep(k, c) end
count_stat('denials')
count_stat('denied_' .. reason)
return reply(0, retry, reason, 0, count, sum, seq, lost)
