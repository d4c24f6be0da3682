-- leader_acquire: take or keep the scheduler leadership.
--
-- KEYS[1]  leader lock key (string: owner id), e.g. scheduler:leader
-- KEYS[2]  epoch counter (string int), e.g. scheduler:epoch
-- ARGV[1]  candidate owner id (host:pid:random)
-- ARGV[2]  lock TTL in ms
-- ARGV[3]  lowest epoch the candidate accepts (the last epoch it saw anywhere + 1;
--          0 = none): a database fence above the Redis counter lifts it
--
-- Returns {status, epoch}: status 1 = newly acquired (new epoch), 2 = still ours (TTL
-- renewed), 0 = held by someone else (epoch = current).
-- A new epoch is max(counter + 1, Redis TIME in milliseconds, ARGV[3]): it only goes
-- up, also after a flush or a restart without persistence reset the counter (the clock
-- part is above every earlier epoch unless leaders changed faster than once a
-- millisecond or the clock stepped back, and ARGV[3] carries what the databases'
-- fences saw: a leader behind one of them steps down and comes back above it). The epoch orders leaders and
-- fences their writes (pool_publish, feed_enqueue, ocr_claim, ocr_reap).
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {2, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
if owner then
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = math.max(redis.call('INCR', KEYS[2]), now_ms, tonumber(ARGV[3] or '0') or 0)
redis.call('SET', KEYS[2], string.format('%d', epoch))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, epoch}
