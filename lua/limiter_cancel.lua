-- limiter_cancel: withdraw a waiter's reservation (it timed out, was stopped or gave up).
--
-- KEYS[1]  zset reservation queue: "waiter id:tokens" -> first-denial µs
-- KEYS[2]  hash waiter id -> Redis-time ms its reservation lapses
-- ARGV[1]  "waiter id:tokens"    ARGV[2] waiter id
-- Returns  the number of reservations withdrawn (0 or 1). O(log w).

redis.call('HDEL', KEYS[2], ARGV[2])
return redis.call('ZREM', KEYS[1], ARGV[1])
