-- limiter_lib_window: helpers for the sliding log, its index and the live keys. Not a script:
-- pasted into limiter_acquire and limiter_status where they say `--! include limiter_lib_window`.
--
-- k.log  zset "grant id:tokens charged" -> admission µs (Redis TIME); a settle rewrites tokens
-- k.cum  zset "admission µs (16 digits):grant id:admission µs:estimate" -> estimated tokens
--        granted before it: the same grants as the log in the same order (added and pruned
--        together; the member starts with the admission time so entries with equal totals, after
--        a 0-token grant, still sort in admission order, and ends as earlier versions read it),
--        indexed by running total so "when will N tokens have left" is one O(log n) lookup
-- k.rpm / k.tpm  gemini:rpm:current / gemini:tpm:current: mirrors for operators. The count comes
--        from the log (ZCARD), the token sum from the limiter's state (gemini:limiter:state, see
--        limiter_lib_state); a mirror that does not hold what the state says (an outside write,
--        or a grant or settle by an earlier version) makes the sum be recounted from the log.
--        Their writes never fail a call (pcall: a key of the wrong type is rewritten or left).
--
-- window_prune(k, sum, cutoff_us, live_count, live_sum) -> count, sum, changed, was_count, was_sum
--   sum: the window's settled token sum as the state recorded it (nil: unknown); live_*: the two
--   mirrors as read (raw strings). The state's sum is trusted only when the mirrors hold exactly
--   the state's figures (else someone else wrote them: the sum is recounted). Drops at most
--   PRUNE_MAX grants admitted at or before cutoff_us from log and cum and takes their tokens off
--   the sum: each grant leaves once, so O(1) amortised per grant and O(log n + PRUNE_MAX) per
--   call. Grants left over by the cap stay counted until a later call (conservative: never an
--   over-admission). An unknown sum is rebuilt from the log: O(n), only after damage.
--   changed: the sum differs from the one passed in (the state must be written); was_count,
--   was_sum: the window before this call's pruning, as the mirrors hold it (was_sum nil when
--   they were not trusted), for `mirror`.
-- log_sum(k, count) -> the settled token sum over the log (O(n): damage or a detected loss)
-- mirrors_agree(live_count, live_sum, count, sum) -> the two mirrors (raw strings as read) hold
--   exactly these integers
-- mirror(k, live_count, live_sum, was_count, was_sum, count, sum, ttl): brings the two mirrors
--   from what they held (raw strings as read) to the truth (count, sum): by the difference when
--   they held exactly the truth as it was before this call (was_*; the usual case, and cheaper
--   than a SET with a TTL: their TTL is renewed with the log's), else rewritten
-- cum_member(gid, at_us, estimate) / cum_parts(member) -> at_us, estimate
-- cum_rebuild(k, count, ttl) -> running total: cum rebuilt from the log (O(n): only when the
--   running total was lost, or cum was damaged)
-- cum_check(k, count, ttl): rebuilds cum when its size differs from the log's; called before cum
--   is read (a token retry hint), not on every grant.

local PRUNE_MAX = 256

-- Tokens in a log member ending in ":<tokens>".
local function cost(entry)
  return tonumber(string.match(entry, ':(%d+)$') or '0')
end

local function cum_member(gid, at_us, estimate)
  return string.format('%016.0f:%s:%.0f:%d', at_us, gid, at_us, estimate)
end

local function cum_parts(member)  -- both formats end in ":admission µs:estimate"
  local at, est = string.match(member or '', ':(%d+):(%d+)$')
  return tonumber(at), tonumber(est)
end

local function log_sum(k, count)
  local sum = 0
  for start = 0, count - 1, 1000 do
    local part = redis.call('ZRANGE', k.log, start, start + 999)
    for i = 1, #part do sum = sum + cost(part[i]) end
  end
  return sum
end

local function cum_rebuild(k, count, ttl)
  redis.call('DEL', k.cum)
  local before = 0
  for start = 0, count - 1, 1000 do
    local part = redis.call('ZRANGE', k.log, start, start + 999, 'WITHSCORES')
    for i = 1, #part, 2 do
      local gid, tok = string.match(part[i], '^(.*):(%d+)$')
      redis.call('ZADD', k.cum, before, cum_member(gid, tonumber(part[i + 1]), tonumber(tok)))
      before = before + tonumber(tok)
    end
  end
  if count > 0 then redis.call('PEXPIRE', k.cum, ttl) end
  return before
end

local function cum_check(k, count, ttl)
  if redis.call('ZCARD', k.cum) ~= count then cum_rebuild(k, count, ttl) end
end

local function mirrors_agree(live_count, live_sum, count, sum)
  return count ~= nil and sum ~= nil and live_count == string.format('%d', count)
    and live_sum == string.format('%.0f', sum)
end

local function window_prune(k, sum, cutoff_us, live_count, live_sum)
  local removed, freed = 0, 0
  local oldest = redis.call('ZRANGE', k.log, 0, 0, 'WITHSCORES')
  if oldest[2] and tonumber(oldest[2]) <= cutoff_us then
    local old = redis.call('ZRANGEBYSCORE', k.log, '-inf', cutoff_us, 'LIMIT', 0, PRUNE_MAX)
    for i = 1, #old do freed = freed + cost(old[i]) end
    removed = #old
    redis.call('ZREMRANGEBYRANK', k.log, 0, removed - 1)
    redis.call('ZREMRANGEBYRANK', k.cum, 0, removed - 1)
  end
  local count = redis.call('ZCARD', k.log)
  local was_count = count + removed
  if sum and count > 0 and not mirrors_agree(live_count, live_sum, was_count, sum) then
    sum = nil  -- an outside write, or an earlier version's grant or settle: the log is the truth
  end
  if count == 0 then return 0, 0, sum ~= 0, was_count, sum end  -- an empty window holds nothing
  if not sum then return count, log_sum(k, count), true, was_count, nil end
  return count, sum - freed, removed > 0, was_count, sum
end

local function mirror(k, live_count, live_sum, was_count, was_sum, count, sum, ttl)
  if mirrors_agree(live_count, live_sum, was_count, was_sum) then
    if count ~= was_count then redis.pcall('INCRBY', k.rpm, count - was_count) end
    if sum ~= was_sum then redis.pcall('INCRBY', k.tpm, string.format('%.0f', sum - was_sum)) end
  elseif not mirrors_agree(live_count, live_sum, count, sum)
      and (live_count or live_sum or count > 0 or sum ~= 0) then
    redis.pcall('SET', k.rpm, count, 'PX', ttl)
    redis.pcall('SET', k.tpm, string.format('%.0f', sum), 'PX', ttl)
  end
end
