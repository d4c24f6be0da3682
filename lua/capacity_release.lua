-- capacity_release: give back an external holder's CPU/RAM share (idempotent).
--
-- KEYS[1] server:cpu:allocated     string(number) vCPUs held by busy slots + external work (all hosts)
-- KEYS[2] server:ram:allocated     string(number) GB held likewise
-- KEYS[3] server:external          hash holder id -> JSON {cpu, ram, kind, host, since_ms, expires_at_ms}
-- KEYS[4] server:external:leases   zset holder id -> Redis-time ms its registration lapses
-- KEYS[5] worker_pool:holders      hash slot id -> JSON holder (read: the slots' share)
-- KEYS[6] server:cpu:allocated:hosts  KEYS[7] server:ram:allocated:hosts  (hash host -> sum)
-- ARGV[1] holder id
-- Returns 1 if a registration was released, 0 if there was none. The sums (total and per
-- host) are rebuilt from the holders.

--! include capacity_lib_sums

redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HDEL', KEYS[3], ARGV[1]) == 0 then return 0 end
recount(KEYS[5], KEYS[3], KEYS[1], KEYS[2], KEYS[6], KEYS[7])
return 1
