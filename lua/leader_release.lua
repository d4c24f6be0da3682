-- leader_release: give up leadership, only if we still hold it.
--
-- KEYS[1]  leader lock key
-- ARGV[1]  owner id
--
-- Returns 1 if released, 0 if the lock was not ours (or already gone).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
