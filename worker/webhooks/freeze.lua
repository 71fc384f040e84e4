-- no named arguments: ARGV[1] is an empty table; the body is ARGV[2], as it is (see outbox.py)
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'body', ARGV[2])
return redis.call('HGET', KEYS[1], 'body')
