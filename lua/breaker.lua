-- breaker: one step of a shared circuit breaker (control_plane/breakers.py has the same
-- transitions as a pure function, and a test runs one table through both).
--
-- KEYS[1]  hash  the breaker: failures, open (0/1), probe_at (Redis-time ms), reason
-- KEYS[2]  hash  open breakers: name -> reason (for the status block); the field is
--                removed when the breaker closes
-- ARGV[1]  op: "admit" | "failure" | "success"
-- ARGV[2]  breaker name            ARGV[3] failures that open it (>= 1)
-- ARGV[4]  probe interval ms       ARGV[5] reason (failure only)    ARGV[6] TTL ms
-- Returns  {verdict, wait_ms, transition, failures}
--   verdict     "closed" (go), "probe" (go: you are the one probe of this interval),
--               "open" (do not call the dependency for wait_ms)
--   transition  "opened" / "closed" to exactly one caller, when this step changed it; else ""

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local threshold = tonumber(ARGV[3])
local probe_ms = tonumber(ARGV[4])
local ttl = tonumber(ARGV[6])
local state = redis.call('HMGET', KEYS[1], 'failures', 'open', 'probe_at')
local failures = tonumber(state[1]) or 0
local open = state[2] == '1'
local probe_at = tonumber(state[3]) or 0

if op == 'admit' then
  if not open then
    return {'closed', 0, '', failures}
  end
  if now >= probe_at then
    redis.call('HSET', KEYS[1], 'probe_at', now + probe_ms)
    redis.call('PEXPIRE', KEYS[1], ttl)
    return {'probe', 0, '', failures}
  end
  return {'open', probe_at - now, '', failures}
end

if op == 'success' then
  if not open and failures == 0 then
    return {'closed', 0, '', 0}
  end
  redis.call('HSET', KEYS[1], 'failures', 0, 'open', 0)
  redis.call('PEXPIRE', KEYS[1], ttl)
  if open then
    redis.call('HDEL', KEYS[2], ARGV[2])
    return {'closed', 0, 'closed', 0}
  end
  return {'closed', 0, '', 0}
end

-- failure
failures = failures + 1
redis.call('HSET', KEYS[1], 'failures', failures)
redis.call('PEXPIRE', KEYS[1], ttl)
if open then
  return {'open', math.max(probe_at - now, 0), '', failures}
end
if failures >= threshold then
  redis.call('HSET', KEYS[1], 'open', 1, 'probe_at', now + probe_ms, 'reason', ARGV[5])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ttl)
  return {'open', probe_ms, 'opened', failures}
end
return {'closed', 0, '', failures}
