-- limiter_settle: replace a grant's token estimate with the actual count (Gemini usage_metadata).
--
-- KEYS[1]  zset   sliding log: "grant id:tokens charged" -> admission time (µs)
-- KEYS[2]  string gemini:tpm:current: the operators' mirror of the window's token sum
-- KEYS[3]  string gemini:limiter:state: the limiter's state, which holds the sum itself
-- ARGV[1]  grant id      ARGV[2] tokens charged at admission (the estimate)
-- ARGV[3]  admission time µs (from the grant)      ARGV[4] actual tokens
-- ARGV[5]  window ms (unused: kept so callers of every version send the same arguments)
-- Returns  the change applied to the window's token count (0 when nothing to do).
--
-- Idempotent: settling again with the same figure changes nothing. A grant pruned from the log
-- (or lost with a Redis restart) no longer counts anywhere, so settling it is a no-op.
-- The member is found in O(log n): by its admission-time name, else (settled before) among the
-- members with exactly its admission time. If the state is missing (or from an older version)
-- the sum is left to the next admission, which rebuilds it from the log (which holds the
-- settled figure).

--! include limiter_lib_state

local log, prefix = KEYS[1], ARGV[1] .. ':'
local member = prefix .. ARGV[2]
local score = tonumber(redis.call('ZSCORE', log, member))
if not score then
  member = nil
  local at = tonumber(ARGV[3])
  if at > 0 then
    for _, entry in ipairs(redis.call('ZRANGEBYSCORE', log, at, at)) do
      if string.sub(entry, 1, #prefix) == prefix then member, score = entry, at end
    end
  end
end
-- Applied while the grant is in the log, whatever this caller's window: another caller may
-- count over a longer one (the state's), and pruning takes the settled figure off the sum.
if not member then return 0 end
local actual = tonumber(ARGV[4])
local delta = actual - tonumber(string.sub(member, #prefix + 1))
if delta ~= 0 then
  redis.call('ZREM', log, member)
  redis.call('ZADD', log, score, prefix .. actual)
  local st = state_read(redis.call('GET', KEYS[3]))
  if st.sum then
    st.sum = st.sum + delta
    state_write({state = KEYS[3]}, nil, st, nil, nil, true)
  end
  -- the mirror follows (as an earlier version's settle does); never fails the settle
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.pcall('INCRBY', KEYS[2], delta) end
end
return delta
