-- workers_reap: drop workers whose last heartbeat is older than a maximum age (server time).
--
-- KEYS[1] gemini:workers   hash worker id -> JSON {..., last_heartbeat_ms}
-- ARGV[1] max age ms
-- Returns the list of worker ids removed (entries without a readable heartbeat included).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[1])
local flat = redis.call('HGETALL', KEYS[1])
local removed = {}
for i = 1, #flat, 2 do
  local ok, w = pcall(cjson.decode, flat[i + 1])
  local beat = ok and type(w) == 'table' and tonumber(w.last_heartbeat_ms) or nil
  if beat == nil or beat < cutoff then
    redis.call('HDEL', KEYS[1], flat[i])
    removed[#removed + 1] = flat[i]
  end
end
return removed
