-- capacity_host: register (and renew) one host's CPU/RAM budget, drop hosts whose
-- registration lapsed, and list the live ones.
--
-- KEYS[1] server:hosts          hash host -> JSON {cpu, ram, pid, expires_at_ms}
-- KEYS[2] server:hosts:leases   zset host -> Redis-time ms its registration lapses
-- ARGV[1] host name ('' = register nothing, only prune and list)
-- ARGV[2] JSON object {cpu, ram, ...} (the host's budget: SERVER_MAX_* minus reserves)
-- ARGV[3] ttl ms
-- Returns {host, JSON, host, JSON, ...} for every live host (expires_at_ms filled in).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, host in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], host)
  redis.call('ZREM', KEYS[2], host)
end
if ARGV[1] ~= '' then
  local entry = cjson.decode(ARGV[2])
  local expires = now + tonumber(ARGV[3])
  entry.expires_at_ms = expires
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
  redis.call('ZADD', KEYS[2], expires, ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
