-- pool_release: give a slot back, fenced by the holder's token (idempotent).
--
-- KEYS[1] worker_pool:assignments   KEYS[2] worker_pool:holders
-- KEYS[3] worker_pool:slot_leases   KEYS[4] worker_pool:pending_modes
-- KEYS[5] server:cpu:allocated      KEYS[6] server:ram:allocated
-- ARGV[1] slot id   ARGV[2] token
-- Returns 1 if released, 0 if the slot was not held with this token (already released
-- or reclaimed): nothing changes then, so a double release cannot free capacity twice.
-- A pending mode recorded by a rebalance is applied now ('' retires the slot).

local EPS = 1e-9
local function fmt(x)
  if x < EPS then return '0' end
  local s = string.format('%.6f', x)
  s = string.gsub(s, '0+$', '')
  s = string.gsub(s, '%.$', '')
  return s
end

local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
local h = cjson.decode(raw)
if h.token ~= ARGV[2] then return 0 end
local cpu = (tonumber(redis.call('GET', KEYS[5]) or '0') or 0) - (tonumber(h.cpu) or 0)
local ram = (tonumber(redis.call('GET', KEYS[6]) or '0') or 0) - (tonumber(h.ram) or 0)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local pending = redis.call('HGET', KEYS[4], ARGV[1])
if pending then
  if pending == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], pending) end
  redis.call('HDEL', KEYS[4], ARGV[1])
end
redis.call('SET', KEYS[5], fmt(cpu))
redis.call('SET', KEYS[6], fmt(ram))
return 1
