-- No check answered: mark the attempt (earlier attempts are stale from now) and send it, when the
-- request carries its message (`a.send`: ARGV[2], on the queue after the rate-limit keys).
redis.call('HSET', KEYS[12], 'attempt', a.attempt)
redis.call('EXPIRE', KEYS[12], a.call_ttl_s)
if a.send then redis.call('LPUSH', KEYS[16 + #a.limits], ARGV[2]) end
return answer('go')
