-- capacity_reap: drop external registrations whose TTL lapsed and give back their share.
--
-- KEYS[1] server:cpu:allocated     string(number) vCPUs held by busy slots + external work (all hosts)
-- KEYS[2] server:ram:allocated     string(number) GB held likewise
-- KEYS[3] server:external          hash holder id -> JSON {cpu, ram, kind, host, since_ms, expires_at_ms}
-- KEYS[4] server:external:leases   zset holder id -> Redis-time ms its registration lapses
-- KEYS[5] worker_pool:holders      hash slot id -> JSON holder (read: the slots' share)
-- KEYS[6] server:cpu:allocated:hosts  KEYS[7] server:ram:allocated:hosts  (hash host -> sum)
-- ARGV: none (time from Redis TIME)
-- Returns the list of holder ids reaped. The sums (total and per host) are rebuilt from
-- the holders whether or not anything lapsed, so a drifted counter is corrected here too.

local EPS = 1e-9
local function fmt(x)
  if x < EPS then return '0' end
  local s = string.format('%.6f', x)
  s = string.gsub(s, '0+$', '')
  s = string.gsub(s, '%.$', '')
  return s
end

-- Rebuild the CPU/RAM sums from what holds capacity (slot holders + external work), in
-- total and per host: the counters cannot drift from the holders.
local function recount(holders_key, external_key, cpu_key, ram_key, cpu_hosts_key, ram_hosts_key)
  local cpu, ram, total_cpu, total_ram = {}, {}, 0, 0
  local function add(raw)
    local e = cjson.decode(raw)
    local host = e.host
    if type(host) ~= 'string' then host = '' end
    local c, r = tonumber(e.cpu) or 0, tonumber(e.ram) or 0
    cpu[host] = (cpu[host] or 0) + c
    ram[host] = (ram[host] or 0) + r
    total_cpu, total_ram = total_cpu + c, total_ram + r
  end
  for _, raw in ipairs(redis.call('HVALS', holders_key)) do add(raw) end
  for _, raw in ipairs(redis.call('HVALS', external_key)) do add(raw) end
  redis.call('SET', cpu_key, fmt(total_cpu))
  redis.call('SET', ram_key, fmt(total_ram))
  redis.call('DEL', cpu_hosts_key, ram_hosts_key)
  for host, value in pairs(cpu) do
    redis.call('HSET', cpu_hosts_key, host, fmt(value))
    redis.call('HSET', ram_hosts_key, host, fmt(ram[host]))
  end
  return cpu, ram
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reaped = {}
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  if redis.call('HDEL', KEYS[3], holder) == 1 then reaped[#reaped + 1] = holder end
  redis.call('ZREM', KEYS[4], holder)
end
recount(KEYS[5], KEYS[3], KEYS[1], KEYS[2], KEYS[6], KEYS[7])
return reaped
