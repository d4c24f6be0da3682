-- pool_publish: write the allocation and the slot assignments together, versioned.
--
-- KEYS[1] worker_pool:allocation    string JSON {"index", "acte", "total", "version", "reason", ..., "updated_at", "updated_at_ms"}
-- KEYS[2] worker_pool:assignments   hash slot id -> mode
-- KEYS[3] worker_pool:holders       hash slot id -> JSON holder (read only: which slots are busy)
-- KEYS[4] worker_pool:pending_modes hash slot id -> mode to switch to at release ('' = retire)
-- KEYS[5] scheduler:leader (optional, with KEYS[6]: fence the publish on the leader)
-- KEYS[6] scheduler:epoch
-- ARGV[1] version (integer; refused unless greater than the stored one)
-- ARGV[2] allocation JSON object built by the caller; updated_at / updated_at_ms are added here
-- ARGV[3] total slots N      ARGV[4] slot id prefix ("ocr-worker-")
-- ARGV[5], ARGV[6], ... mode, count pairs (counts add up to N), in tie-break order
-- Returns {1, version, slots changed} or {0, stored version} if a newer or equal
-- version is already published (an old writer cannot overwrite a newer plan), or
-- {-1, 'not_leader'} when fenced (KEYS[5..6]) and the JSON's "leader" / "epoch" are not
-- the lock's owner and the current epoch: a stalled leader cannot publish. A fenced
-- publish compares versions only with a plan of its own epoch, so a plan left by any
-- other epoch (say a stale one after a Redis flush) can never block the real leader.
--
-- Minimal changes: each slot keeps its effective mode (pending mode if any, else its
-- assigned mode) while that mode still needs slots, busy slots first (a busy slot
-- keeps the mode it runs rather than switching later, when a free slot can switch
-- now instead); only the excess is reassigned. A free slot switches at once; a busy slot keeps its mode in the
-- assignments and records the new one in pending_modes, applied when it is released.
-- Slots numbered above N are removed (busy ones at release: pending '').

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

local version = tonumber(ARGV[1])
local fence_epoch = nil
if #KEYS >= 6 then
  local plan = cjson.decode(ARGV[2])
  fence_epoch = tonumber(plan.epoch)
  if redis.call('GET', KEYS[5]) ~= plan.leader or fence_epoch == nil
      or tonumber(redis.call('GET', KEYS[6]) or '') ~= fence_epoch then
    return {-1, 'not_leader'}
  end
end
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, obj = pcall(cjson.decode, stored)
  if ok and type(obj) == 'table' and tonumber(obj.version) and tonumber(obj.version) >= version
      and (fence_epoch == nil or tonumber(obj.epoch) == fence_epoch) then
    return {0, string.format('%d', tonumber(obj.version))}
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n_slots, prefix = tonumber(ARGV[3]), ARGV[4]

local function to_map(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end
local assign = to_map(redis.call('HGETALL', KEYS[2]))
local pending = to_map(redis.call('HGETALL', KEYS[4]))
local held = {}
for _, slot in ipairs(redis.call('HKEYS', KEYS[3])) do held[slot] = true end

local modes, need = {}, {}
for i = 5, #ARGV, 2 do
  modes[#modes + 1] = ARGV[i]
  need[ARGV[i]] = tonumber(ARGV[i + 1])
end

local ids, eff, target = {}, {}, {}
for i = 1, n_slots do
  local s = prefix .. i
  ids[i] = s
  local p = pending[s]
  if p ~= nil and p ~= '' then eff[i] = p else eff[i] = assign[s] end
end

-- Keep effective modes that are still needed, in order of how cheap keeping them is.
local function keep(mode_of, pred)
  for i = 1, n_slots do
    local m = mode_of(i)
    if target[i] == nil and m ~= nil and (need[m] or 0) > 0 and pred(i) then
      target[i] = m
      need[m] = need[m] - 1
    end
  end
end
local function effective(i) return eff[i] end
local function running(i) return assign[ids[i]] end
local function busy(i) return held[ids[i]] == true end
-- Busy slots first: switching a free slot takes effect now, a busy one only after its job.
keep(effective, function(i) return busy(i) and assign[ids[i]] == eff[i] end)  -- busy, no switch planned
keep(running, busy)                                                         -- busy: cancel a planned switch
keep(effective, function(i) return not busy(i) end)                         -- free slots
keep(effective, busy)                                                       -- busy: keep the planned switch
for i = 1, n_slots do  -- the rest: whatever is still missing
  if target[i] == nil then
    for _, m in ipairs(modes) do
      if need[m] > 0 then
        target[i] = m
        need[m] = need[m] - 1
        break
      end
    end
  end
end

local changed = 0
for i = 1, n_slots do
  local s, m = ids[i], target[i]
  local before_assign, before_pending = assign[s], pending[s]
  if held[s] then
    if assign[s] == m then
      redis.call('HDEL', KEYS[4], s)
      if before_pending ~= nil then changed = changed + 1 end
    else
      redis.call('HSET', KEYS[4], s, m)
      if before_pending ~= m then changed = changed + 1 end
    end
  else
    redis.call('HSET', KEYS[2], s, m)
    redis.call('HDEL', KEYS[4], s)
    if before_assign ~= m then changed = changed + 1 end
  end
end
for s, _ in pairs(assign) do
  local n = tonumber(string.match(s, '(%d+)$'))
  if string.sub(s, 1, #prefix) == prefix and n ~= nil and n > n_slots then
    if not held[s] then
      redis.call('HDEL', KEYS[2], s)
      redis.call('HDEL', KEYS[4], s)
      changed = changed + 1
    elseif pending[s] ~= '' then
      redis.call('HSET', KEYS[4], s, '')
      changed = changed + 1
    end
  end
end

local body = string.sub(ARGV[2], 1, -2)
if body ~= '{' then body = body .. ',' end
redis.call('SET', KEYS[1], body .. '"updated_at":"' .. iso(now) .. '","updated_at_ms":' .. string.format('%d', now) .. '}')
return {1, string.format('%d', version), changed}
