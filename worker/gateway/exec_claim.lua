local done = redis.call('HGET', KEYS[1], 'result')
if done then return {'done', done} end
if redis.call('HSETNX', KEYS[1], 'claimed_by', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'run', ''}
end
return {'claimed', redis.call('HGET', KEYS[1], 'claimed_by')}
