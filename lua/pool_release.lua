-- pool_release: give a slot back, fenced by the holder's token (idempotent).
--
-- KEYS[1] worker_pool:assignments   KEYS[2] worker_pool:holders
-- KEYS[3] worker_pool:slot_leases   KEYS[4] worker_pool:pending_modes
-- KEYS[5] server:cpu:allocated      KEYS[6] server:ram:allocated
-- KEYS[7] server:external           KEYS[8] server:external:leases (unused; the slot key list)
-- KEYS[9] server:cpu:allocated:hosts  KEYS[10] server:ram:allocated:hosts
-- ARGV[1] slot id   ARGV[2] token
-- Returns 1 if released, 0 if the slot was not held with this token (already released
-- or reclaimed): nothing changes then, so a double release cannot free capacity twice.
-- A pending mode recorded by a rebalance is applied now ('' retires the slot). The CPU/RAM
-- sums (total and per host) are rebuilt from the remaining holders.

--! include capacity_lib_sums

local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
local h = cjson.decode(raw)
if h.token ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local pending = redis.call('HGET', KEYS[4], ARGV[1])
if pending then
  if pending == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], pending) end
  redis.call('HDEL', KEYS[4], ARGV[1])
end
recount(KEYS[2], KEYS[7], KEYS[5], KEYS[6], KEYS[9], KEYS[10])
return 1
