-- capacity_register: reserve CPU/RAM for external work (e.g. a registre worker), only if it fits.
--
-- KEYS[1] server:cpu:allocated     string(number) vCPUs held by busy slots + external work
-- KEYS[2] server:ram:allocated     string(number) GB held likewise
-- KEYS[3] server:external          hash holder id -> JSON {cpu, ram, kind, since_ms, expires_at_ms}
-- KEYS[4] server:external:leases   zset holder id -> Redis-time ms its registration lapses
-- ARGV[1] holder id
-- ARGV[2] cpu (vCPU)      ARGV[3] ram (GB)      ARGV[4] kind
-- ARGV[5] ttl ms (0: no expiry)
-- ARGV[6] cpu budget      ARGV[7] ram budget
-- Returns {1|0, cpu allocated after, ram allocated after}. Registering a holder again
-- replaces (and renews) its previous share; a refused update keeps the old one.
-- Expired registrations are reaped first so a dead registre cannot hold capacity.

local EPS = 1e-9
local function fmt(x)
  if x < EPS then return '0' end
  local s = string.format('%.6f', x)
  s = string.gsub(s, '0+$', '')
  s = string.gsub(s, '%.$', '')
  return s
end
local function num(key) return tonumber(redis.call('GET', key) or '0') or 0 end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cpu, ram = num(KEYS[1]), num(KEYS[2])

for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  local raw = redis.call('HGET', KEYS[3], holder)
  if raw then
    local e = cjson.decode(raw)
    cpu, ram = cpu - (tonumber(e.cpu) or 0), ram - (tonumber(e.ram) or 0)
    redis.call('HDEL', KEYS[3], holder)
  end
  redis.call('ZREM', KEYS[4], holder)
end

local want_cpu, want_ram = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = tonumber(ARGV[5])
local old_cpu, old_ram, since = 0, 0, now
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then
  local e = cjson.decode(old)
  old_cpu, old_ram, since = tonumber(e.cpu) or 0, tonumber(e.ram) or 0, tonumber(e.since_ms) or now
end

local new_cpu, new_ram = cpu - old_cpu + want_cpu, ram - old_ram + want_ram
if new_cpu > tonumber(ARGV[6]) + EPS or new_ram > tonumber(ARGV[7]) + EPS then
  redis.call('SET', KEYS[1], fmt(cpu))
  redis.call('SET', KEYS[2], fmt(ram))
  return {0, fmt(cpu), fmt(ram)}
end

local entry = {cpu = want_cpu, ram = want_ram, kind = ARGV[4], since_ms = since}
if ttl > 0 then
  entry.expires_at_ms = now + ttl
  redis.call('ZADD', KEYS[4], now + ttl, ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(entry))
redis.call('SET', KEYS[1], fmt(new_cpu))
redis.call('SET', KEYS[2], fmt(new_ram))
return {1, fmt(new_cpu), fmt(new_ram)}
