-- leader_acquire: take or keep the scheduler leadership.
--
-- KEYS[1]  leader lock key (string: owner id), e.g. scheduler:leader
-- KEYS[2]  epoch counter (string int), e.g. scheduler:epoch
-- ARGV[1]  candidate owner id (host:pid:random)
-- ARGV[2]  lock TTL in ms
--
-- Returns {status, epoch}: status 1 = newly acquired (epoch incremented),
-- 2 = still ours (TTL renewed), 0 = held by someone else (epoch = current).
-- The epoch orders leaders: allocation versions written by a newer leader
-- always beat an older one's.
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {2, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
if owner then
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local epoch = redis.call('INCR', KEYS[2])
return {1, epoch}
