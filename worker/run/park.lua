-- Timers.park's script (worker/run/timers.py, _PARK: KEYS, the named arguments `a`, and the
-- pending action and the agent's memory (JSON) as ARGV[2] and ARGV[3]).
local a = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[2]) ~= a.token then return {'lost'} end
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'running' then return {'ended', s or ''} end
local cancel = redis.call('GET', KEYS[7])
if cancel then return {'cancelled', cancel} end
if a.reply_key ~= '' and redis.call('LLEN', KEYS[8]) > 0 then return {'ready'} end
local seq = redis.call('HINCRBY', KEYS[1], 'park_seq', 1)
redis.call('HSET', KEYS[1], 'parked', '1', 'wait', a.wait, 'pending', ARGV[2], 'memory', ARGV[3],
           'wait_reply', a.reply_key)
redis.call('ZADD', KEYS[4], a.wake_ts, a.run_id)
redis.call('HINCRBY', KEYS[5], a.tenant, 1)
redis.call('HINCRBY', KEYS[6], a.agent, 1)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], a.run_id)
return {'parked', seq}
