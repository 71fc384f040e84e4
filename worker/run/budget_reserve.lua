local function budget_reserve(k_run, k_call, max_calls, ttl)
  local used = tonumber(redis.call('HGET', k_run, 'tool_calls') or '0')
  if redis.call('EXISTS', k_call) == 1 then
    return 1, used, redis.call('HGET', k_call, 'result')
  end
  if used >= max_calls then return 0, used, false end
  used = redis.call('HINCRBY', k_run, 'tool_calls', 1)
  redis.call('HSET', k_call, 'state', 'started')
  redis.call('EXPIRE', k_call, ttl)
  return 1, used, false
end
