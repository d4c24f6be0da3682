-- pool_take: take a free pool slot of one mode, atomically with its CPU/RAM capacity on
-- the taking host.
--
-- KEYS[1] worker_pool:assignments   hash slot id -> mode
-- KEYS[2] worker_pool:holders       hash slot id -> JSON holder {holder, token, mode, document, host, cpu, ram, taken_at_ms}
-- KEYS[3] worker_pool:slot_leases   zset slot id -> Redis-time ms its holder's lease lapses
-- KEYS[4] worker_pool:pending_modes hash slot id -> mode to switch to at release ('' = retire the slot)
-- KEYS[5] server:cpu:allocated      KEYS[6] server:ram:allocated      (totals, all hosts)
-- KEYS[7] server:external           KEYS[8] server:external:leases
-- KEYS[9] server:cpu:allocated:hosts  KEYS[10] server:ram:allocated:hosts  (hash host -> sum)
-- ARGV[1] mode      ARGV[2] token (unique per take)
-- ARGV[3] holder JSON object (holder, token, mode, document, host, cpu, ram); taken_at_ms is added here
-- ARGV[4] lease ttl ms
-- ARGV[5] slot cpu cost   ARGV[6] slot ram cost
-- ARGV[7] cpu budget of the taking host   ARGV[8] ram budget of the taking host
-- ARGV[9] the taking host's name (OCR_HOST_NAME)
-- Returns {1, slot id, lease expiry ms} or {0, 'no_free_slot' | 'capacity'}.
--
-- First every lapsed lease is reclaimed (slots and external registrations): the slot is
-- released as if its holder had, so a killed process's slot and capacity come back by
-- themselves. The sums are then rebuilt from the holders (total and per host), and the
-- slot is taken only if the taking host's own holders plus this slot fit ITS budget.
-- A retried call with the same token returns the slot it already holds.

--! include capacity_lib_sums
local function slot_number(slot) return tonumber(string.match(slot, '(%d+)$')) or math.huge end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Idempotent retry: this token already holds a slot.
local holders = redis.call('HGETALL', KEYS[2])
for i = 1, #holders, 2 do
  if string.find(holders[i + 1], ARGV[2], 1, true) then
    local h = cjson.decode(holders[i + 1])
    if h.token == ARGV[2] then
      return {1, holders[i], tonumber(redis.call('ZSCORE', KEYS[3], holders[i]) or '0')}
    end
  end
end

-- Reclaim lapsed slot leases.
for _, slot in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  if redis.call('HEXISTS', KEYS[2], slot) == 1 then
    redis.call('HDEL', KEYS[2], slot)
    local pending = redis.call('HGET', KEYS[4], slot)
    if pending then
      if pending == '' then redis.call('HDEL', KEYS[1], slot) else redis.call('HSET', KEYS[1], slot, pending) end
      redis.call('HDEL', KEYS[4], slot)
    end
  end
  redis.call('ZREM', KEYS[3], slot)
end
-- Reclaim lapsed external registrations.
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now)) do
  redis.call('HDEL', KEYS[7], holder)
  redis.call('ZREM', KEYS[8], holder)
end
local cpu_by_host, ram_by_host = recount(KEYS[2], KEYS[7], KEYS[5], KEYS[6], KEYS[9], KEYS[10])

-- The lowest-numbered free slot assigned to this mode.
local chosen, chosen_n = nil, math.huge
local assignments = redis.call('HGETALL', KEYS[1])
for i = 1, #assignments, 2 do
  local slot = assignments[i]
  if assignments[i + 1] == ARGV[1] and redis.call('HEXISTS', KEYS[2], slot) == 0 then
    local n = slot_number(slot)
    if n < chosen_n then chosen, chosen_n = slot, n end
  end
end
if not chosen then return {0, 'no_free_slot'} end

local host = ARGV[9]
local cpu, ram = cpu_by_host[host] or 0, ram_by_host[host] or 0
local slot_cpu, slot_ram = tonumber(ARGV[5]), tonumber(ARGV[6])
if cpu + slot_cpu > tonumber(ARGV[7]) + EPS or ram + slot_ram > tonumber(ARGV[8]) + EPS then
  return {0, 'capacity'}
end

local body = string.sub(ARGV[3], 1, -2)
if body ~= '{' then body = body .. ',' end
redis.call('HSET', KEYS[2], chosen, body .. '"taken_at_ms":' .. string.format('%d', now) .. '}')
local expires = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[3], expires, chosen)
recount(KEYS[2], KEYS[7], KEYS[5], KEYS[6], KEYS[9], KEYS[10])
return {1, chosen, expires}
