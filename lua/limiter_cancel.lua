-- limiter_cancel: withdraw a waiter's reservation (it timed out or is shutting down).
--
-- KEYS[1]  zset reservation queue: "waiter id:tokens:expires_ms" -> first-denial time (µs)
-- ARGV[1]  waiter id
-- Returns  the number of reservations withdrawn (0 or 1).

local prefix = ARGV[1] .. ':'
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
return removed
