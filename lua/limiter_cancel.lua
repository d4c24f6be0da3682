-- limiter_cancel: withdraw a waiter's reservation (it timed out or is shutting down).
--
-- KEYS[1]  zset reservation queue: waiter id -> first-denial time (µs)
-- KEYS[2]  hash waiter id -> "tokens:expires_ms"
-- ARGV[1]  waiter id
-- Returns  1 if a reservation was withdrawn, else 0.

redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
