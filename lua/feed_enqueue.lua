-- feed_enqueue: put one claimed document on its Dramatiq queue and in the enqueued set,
-- together, only while the caller is the current scheduler leader.
--
-- KEYS[1] scheduler:leader                    string: owner id of the leader lock
-- KEYS[2] scheduler:epoch                     string(int): the current leader epoch
-- KEYS[3] worker_pool:enqueued:<type>         zset env/id -> Redis-time ms of the enqueue
-- KEYS[4] <dramatiq namespace>:<queue>        list of Dramatiq message ids (Dramatiq's queue)
-- KEYS[5] <dramatiq namespace>:<queue>.msgs   hash message id -> encoded message
-- ARGV[1] leader owner id   ARGV[2] leader epoch
-- ARGV[3] document ref (env/id)   ARGV[4] Dramatiq redis_message_id   ARGV[5] message JSON
-- Returns 1 (enqueued) or 0 (fenced: not the lock owner, or not the current epoch; nothing
-- written). Errors before any write when a key has the wrong type, so a failure never
-- leaves a message without its enqueued entry or the other way round.
--
-- Writes what Dramatiq's own enqueue writes (HSET msgs + RPUSH queue, see its
-- brokers/redis/dispatch.lua), so consumers see an ordinary message.
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
local expected = {zset = true, list = true, hash = true}
local wanted = {[3] = 'zset', [4] = 'list', [5] = 'hash'}
for i = 3, 5 do
  local kind = redis.call('TYPE', KEYS[i]).ok
  if kind ~= 'none' and kind ~= wanted[i] then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. kind .. ', expected ' .. wanted[i])
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now, ARGV[3])
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
redis.call('RPUSH', KEYS[4], ARGV[4])
return 1
