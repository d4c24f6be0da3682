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

--! include capacity_lib_sums

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reaped = {}
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  if redis.call('HDEL', KEYS[3], holder) == 1 then reaped[#reaped + 1] = holder end
  redis.call('ZREM', KEYS[4], holder)
end
recount(KEYS[5], KEYS[3], KEYS[1], KEYS[2], KEYS[6], KEYS[7])
return reaped
