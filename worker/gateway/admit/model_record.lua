local recorded = redis.call('HGET', KEYS[12], 'result')
if recorded then return answer('recorded', recorded) end
