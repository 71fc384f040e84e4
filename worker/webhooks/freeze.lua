if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'body', ARGV[1])
return redis.call('HGET', KEYS[1], 'body')
