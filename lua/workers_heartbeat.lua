-- workers_heartbeat: record a worker's state with the server's time.
--
-- KEYS[1] gemini:workers   hash worker id -> JSON {host, pid, mode, document, ..., last_heartbeat, last_heartbeat_ms}
-- ARGV[1] worker id
-- ARGV[2] JSON object (host, pid, mode, document, extra fields); the heartbeat time is added here
-- Returns the heartbeat time (Redis-time ms).

local function iso(ms)  -- UTC ISO-8601 from Unix ms (civil-from-days, proleptic Gregorian)
  local secs = math.floor(ms / 1000)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60, ms % 1000)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local body = string.sub(ARGV[2], 1, -2)
if body ~= '{' then body = body .. ',' end
redis.call('HSET', KEYS[1], ARGV[1],
  body .. '"last_heartbeat":"' .. iso(now) .. '","last_heartbeat_ms":' .. string.format('%d', now) .. '}')
return now
