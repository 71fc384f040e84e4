local function retry_budget(key, op, ratio, min_retries, window, now)
  local bucket = math.floor(now / window)
  local cur = tonumber(redis.call('HGET', key, 'bucket') or '-1')
  if cur ~= bucket then
    local calls, retries = 0, 0
    if cur == bucket - 1 then
      calls = tonumber(redis.call('HGET', key, 'calls') or '0')
      retries = tonumber(redis.call('HGET', key, 'retries') or '0')
    end
    redis.call('HSET', key, 'bucket', bucket, 'calls', 0, 'retries', 0,
               'prev_calls', calls, 'prev_retries', retries)
    redis.call('PEXPIRE', key, window * 3)
  end
  if op == 'call' then
    redis.call('HINCRBY', key, 'calls', 1)
    return 1
  end
  local weight = 1 - (now % window) / window
  local calls = tonumber(redis.call('HGET', key, 'calls')) +
                tonumber(redis.call('HGET', key, 'prev_calls')) * weight
  local retries = tonumber(redis.call('HGET', key, 'retries')) +
                  tonumber(redis.call('HGET', key, 'prev_retries')) * weight
  if retries + 1 > ratio * calls + min_retries then return 0 end
  redis.call('HINCRBY', key, 'retries', 1)
  return 1
end
