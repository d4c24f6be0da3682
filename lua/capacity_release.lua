-- capacity_release: give back an external holder's CPU/RAM share (idempotent).
--
-- KEYS[1] server:cpu:allocated   KEYS[2] server:ram:allocated
-- KEYS[3] server:external        KEYS[4] server:external:leases
-- ARGV[1] holder id
-- Returns 1 if a registration was released, 0 if there was none.

local EPS = 1e-9
local function fmt(x)
  if x < EPS then return '0' end
  local s = string.format('%.6f', x)
  s = string.gsub(s, '0+$', '')
  s = string.gsub(s, '%.$', '')
  return s
end

redis.call('ZREM', KEYS[4], ARGV[1])
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if not raw then return 0 end
local e = cjson.decode(raw)
local cpu = (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) - (tonumber(e.cpu) or 0)
local ram = (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) - (tonumber(e.ram) or 0)
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SET', KEYS[1], fmt(cpu))
redis.call('SET', KEYS[2], fmt(ram))
return 1
