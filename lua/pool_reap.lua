-- pool_reap: release every slot whose holder's lease lapsed, and every lapsed external
-- registration, giving back their CPU/RAM (a killed process's slot comes back by itself).
--
-- KEYS[1] worker_pool:assignments   KEYS[2] worker_pool:holders
-- KEYS[3] worker_pool:slot_leases   KEYS[4] worker_pool:pending_modes
-- KEYS[5] server:cpu:allocated      KEYS[6] server:ram:allocated
-- KEYS[7] server:external           KEYS[8] server:external:leases
-- ARGV: none (time from Redis TIME)
-- Returns {slot ids reaped, external holder ids reaped}.

local EPS = 1e-9
local function fmt(x)
  if x < EPS then return '0' end
  local s = string.format('%.6f', x)
  s = string.gsub(s, '0+$', '')
  s = string.gsub(s, '%.$', '')
  return s
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
local externals = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now)
if #slots == 0 and #externals == 0 then return {{}, {}} end
local cpu = tonumber(redis.call('GET', KEYS[5]) or '0') or 0
local ram = tonumber(redis.call('GET', KEYS[6]) or '0') or 0

local reaped_slots = {}
for _, slot in ipairs(slots) do
  local raw = redis.call('HGET', KEYS[2], slot)
  if raw then
    local h = cjson.decode(raw)
    cpu, ram = cpu - (tonumber(h.cpu) or 0), ram - (tonumber(h.ram) or 0)
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
  local raw = redis.call('HGET', KEYS[7], holder)
  if raw then
    local e = cjson.decode(raw)
    cpu, ram = cpu - (tonumber(e.cpu) or 0), ram - (tonumber(e.ram) or 0)
    redis.call('HDEL', KEYS[7], holder)
    reaped_external[#reaped_external + 1] = holder
  end
  redis.call('ZREM', KEYS[8], holder)
end
redis.call('SET', KEYS[5], fmt(cpu))
redis.call('SET', KEYS[6], fmt(ram))
return {reaped_slots, reaped_external}
