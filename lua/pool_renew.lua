-- pool_renew: extend a slot holder's lease (heartbeat), fenced by its token.
--
-- KEYS[1] worker_pool:holders       KEYS[2] worker_pool:slot_leases
-- ARGV[1] slot id   ARGV[2] token   ARGV[3] lease ttl ms
-- Returns the new lease expiry (Redis-time ms), or 0 if the slot is no longer ours
-- (released, or reclaimed after the lease lapsed).

local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local h = cjson.decode(raw)
if h.token ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
return expires
