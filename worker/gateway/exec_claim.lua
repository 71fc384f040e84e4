-- A write's claim (worker/gateway/executor.py ClaimVerdict). KEYS: 1 the call's exec hash. ARGV[1]:
-- a JSON table `a`: claimed_by (text: the attempt that claims), ttl_s (the hash's).
-- Returns {'done', the recorded result}, {'run', ''} (claimed now) or {'claimed', by whom}.
local a = cjson.decode(ARGV[1])
local done = redis.call('HGET', KEYS[1], 'result')
if done then return {'done', done} end
if redis.call('HSETNX', KEYS[1], 'claimed_by', a.claimed_by) == 1 then
  redis.call('EXPIRE', KEYS[1], a.ttl_s)
  return {'run', ''}
end
return {'claimed', redis.call('HGET', KEYS[1], 'claimed_by')}
