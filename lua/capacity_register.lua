-- capacity_register: reserve CPU/RAM for external work (e.g. a registre worker) on one host,
-- only if it fits that host's budget.
--
-- KEYS[1] server:cpu:allocated     string(number) vCPUs held by busy slots + external work (all hosts)
-- KEYS[2] server:ram:allocated     string(number) GB held likewise
-- KEYS[3] server:external          hash holder id -> JSON {cpu, ram, kind, host, since_ms, expires_at_ms}
-- KEYS[4] server:external:leases   zset holder id -> Redis-time ms its registration lapses
-- KEYS[5] worker_pool:holders      hash slot id -> JSON holder (read: the slots' share)
-- KEYS[6] server:cpu:allocated:hosts  KEYS[7] server:ram:allocated:hosts  (hash host -> sum)
-- ARGV[1] holder id
-- ARGV[2] cpu (vCPU)      ARGV[3] ram (GB)      ARGV[4] kind
-- ARGV[5] ttl ms (0: no expiry)
-- ARGV[6] cpu budget      ARGV[7] ram budget     (of the host)
-- ARGV[8] host name (OCR_HOST_NAME)
-- Returns {1|0, cpu allocated on the host after, ram allocated on the host after}.
-- Registering a holder again replaces (and renews) its previous share; a refused update
-- keeps the old one. Expired registrations are reaped first so a dead registre cannot
-- hold capacity; the sums (total and per host) are rebuilt from the holders.

--! include capacity_lib_sums

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('HDEL', KEYS[3], holder)
  redis.call('ZREM', KEYS[4], holder)
end
local cpu_by_host, ram_by_host = recount(KEYS[5], KEYS[3], KEYS[1], KEYS[2], KEYS[6], KEYS[7])

local host = ARGV[8]
local cpu, ram = cpu_by_host[host] or 0, ram_by_host[host] or 0
local want_cpu, want_ram = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = tonumber(ARGV[5])
local old_cpu, old_ram, since = 0, 0, now
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then
  local e = cjson.decode(old)
  since = tonumber(e.since_ms) or now
  local old_host = e.host
  if type(old_host) ~= 'string' then old_host = '' end
  if old_host == host then old_cpu, old_ram = tonumber(e.cpu) or 0, tonumber(e.ram) or 0 end
end

local new_cpu, new_ram = cpu - old_cpu + want_cpu, ram - old_ram + want_ram
if new_cpu > tonumber(ARGV[6]) + EPS or new_ram > tonumber(ARGV[7]) + EPS then
  return {0, fmt(cpu), fmt(ram)}
end

local entry = {cpu = want_cpu, ram = want_ram, kind = ARGV[4], host = host, since_ms = since}
if ttl > 0 then
  entry.expires_at_ms = now + ttl
  redis.call('ZADD', KEYS[4], now + ttl, ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(entry))
recount(KEYS[5], KEYS[3], KEYS[1], KEYS[2], KEYS[6], KEYS[7])
return {1, fmt(new_cpu), fmt(new_ram)}
