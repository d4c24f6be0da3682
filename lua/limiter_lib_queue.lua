-- limiter_lib_queue: the FIFO reservation queue. Not a script: pasted into limiter_acquire
-- where it says `--! include limiter_lib_queue`.
--
-- k.waitq   zset "waiter id:tokens" -> first-denial µs: FIFO order. A waiter keeps its place for
--           as long as it keeps asking (one acquire call, however long it waits).
-- k.wuntil  hash waiter id -> Redis-time ms its reservation lapses unless it asks again
--
-- Only the first `reserved` waiters hold room: one of them leaves room for those ahead of it;
-- everyone else (newcomers, try_acquire, waiters further back) for all of them. A waiter further
-- back moves up as those ahead are served, so nobody starves, and a call reads at most
-- `reserved` entries: O(log w + reserved) whatever the queue's length w.
--
-- queue_ahead(k, own, now_ms, reserved, max_tok) -> ahead_req, ahead_tok, queued, position
--   Room to leave (requests, tokens), whether `own` is queued, and how many waiters are ahead
--   of it in the whole queue (its rank; the queue's length if not queued): for the retry hint.
--   A waiter needing more than max_tok (the restart period's share of TPM) cannot be served
--   before that period ends, so it holds no room during it (else nobody would be admitted).
--   Drops lapsed reservations among the first `reserved` (never the caller's own).
-- queue_keep(k, own, gid, queued, now_us, until_ms, keep_ms)  join at the back or keep the place
-- queue_leave(k, own, gid)                                     granted: leave the queue

local function queue_ahead(k, own, now_ms, reserved, max_tok)
  local top = redis.call('ZRANGE', k.waitq, 0, reserved - 1)
  if #top == 0 then return 0, 0, false, 0 end
  local ids, toks = {}, {}
  for i = 1, #top do
    local id, t = string.match(top[i], '^(.*):(%d+)$')
    ids[i], toks[i] = id or top[i], tonumber(t) or 0
  end
  local untils = redis.call('HMGET', k.wuntil, unpack(ids))
  local req, tok = 0, 0
  for i = 1, #top do
    if top[i] == own then return req, tok, true, req end
    local u = tonumber(untils[i])
    if not u or u < now_ms then
      redis.call('ZREM', k.waitq, top[i])
      redis.call('HDEL', k.wuntil, ids[i])
    elseif toks[i] <= max_tok then
      req, tok = req + 1, tok + toks[i]
    end
  end
  if #top < reserved then return req, tok, false, req end
  local rank = redis.call('ZRANK', k.waitq, own)
  if rank then return req, tok, true, rank end
  return req, tok, false, redis.call('ZCARD', k.waitq)
end

local function queue_keep(k, own, gid, queued, now_us, until_ms, keep_ms)
  if not queued then redis.call('ZADD', k.waitq, now_us, own) end
  redis.call('HSET', k.wuntil, gid, until_ms)
  -- Never shorten a TTL another waiter's entry relies on.
  if redis.call('PTTL', k.waitq) < keep_ms then redis.call('PEXPIRE', k.waitq, keep_ms) end
  if redis.call('PTTL', k.wuntil) < keep_ms then redis.call('PEXPIRE', k.wuntil, keep_ms) end
end

local function queue_leave(k, own, gid)
  redis.call('ZREM', k.waitq, own)
  redis.call('HDEL', k.wuntil, gid)
end
