-- capacity_reap: drop external registrations whose TTL lapsed and give back their share.
--
-- KEYS[1] server:cpu:allocated   KEYS[2] server:ram:allocated
-- KEYS[3] server:external        KEYS[4] server:external:leases
-- ARGV: none (time from Redis TIME)
-- Returns the list of holder ids reaped.

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
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
if #expired == 0 then return {} end
local cpu = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local ram = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local reaped = {}
for _, holder in ipairs(expired) do
  local raw = redis.call('HGET', KEYS[3], holder)
  if raw then
    local e = cjson.decode(raw)
    cpu, ram = cpu - (tonumber(e.cpu) or 0), ram - (tonumber(e.ram) or 0)
    redis.call('HDEL', KEYS[3], holder)
    reaped[#reaped + 1] = holder
  end
  redis.call('ZREM', KEYS[4], holder)
end
redis.call('SET', KEYS[1], fmt(cpu))
redis.call('SET', KEYS[2], fmt(ram))
return reaped
