-- No check answered: mark the attempt (earlier attempts are stale from now) and send it.
redis.call('HSET', KEYS[12], 'attempt', a.attempt)
redis.call('EXPIRE', KEYS[12], a.call_ttl_s)
return answer('go')
