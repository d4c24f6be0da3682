-- pool_reap: release every slot whose holder's lease lapsed, and every lapsed external
-- registration, then rebuild the CPU/RAM sums from the holders (a killed process's slot
-- comes back by itself; counters that drifted are corrected).
--
-- KEYS[1] worker_pool:assignments   KEYS[2] worker_pool:holders
-- KEYS[3] worker_pool:slot_leases   KEYS[4] worker_pool:pending_modes
-- KEYS[5] server:cpu:allocated      KEYS[6] server:ram:allocated
-- KEYS[7] server:external           KEYS[8] server:external:leases
-- KEYS[9] server:cpu:allocated:hosts  KEYS[10] server:ram:allocated:hosts
-- ARGV: none (time from Redis TIME)
-- Returns {slot ids reaped, external holder ids reaped}.

--! include capacity_lib_sums

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
local externals = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now)

local reaped_slots = {}
for _, slot in ipairs(slots) do
  if redis.call('HEXISTS', KEYS[2], slot) == 1 then
    redis.call('HDEL', KEYS[2], slot)
    local pending = redis.call('HGET', KEYS[4], slot)
    if pending then
      if pending == '' then redis.call('HDEL', KEYS[1], slot) else redis.call('HSET', KEYS[1], slot, pending) end
      redis.call('HDEL', KEYS[4], slot)
    end
    reaped_slots[#reaped_slots + 1] = slot
  end
  redis.call('ZREM', KEYS[3], slot)
end
local reaped_external = {}
for _, holder in ipairs(externals) do
  if redis.call('HDEL', KEYS[7], holder) == 1 then
    reaped_external[#reaped_external + 1] = holder
  end
  redis.call('ZREM', KEYS[8], holder)
end
recount(KEYS[2], KEYS[7], KEYS[5], KEYS[6], KEYS[9], KEYS[10])
return {reaped_slots, reaped_external}
