if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lost'} end
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'running' then return {'ended', s or ''} end
local cancel = redis.call('GET', KEYS[7])
if cancel then return {'cancelled', cancel} end
if ARGV[9] == '1' and redis.call('LLEN', KEYS[8]) > 0 then return {'ready'} end
local seq = redis.call('HINCRBY', KEYS[1], 'park_seq', 1)
redis.call('HSET', KEYS[1], 'parked', '1', 'wait', ARGV[3], 'pending', ARGV[4], 'memory', ARGV[5],
           'wait_reply', ARGV[10])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[6])
redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
redis.call('HINCRBY', KEYS[6], ARGV[8], 1)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[6])
return {'parked', seq}
