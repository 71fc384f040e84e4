local function breaker_record(key, ok, threshold, rate, min_calls, window, now)
  local state = redis.call('HGET', key, 'state') or 'closed'
  local win_start = tonumber(redis.call('HGET', key, 'win_start_ms') or '0')
  if now - win_start > window then
    redis.call('HSET', key, 'win_start_ms', now, 'win_calls', 0, 'win_failures', 0)
  end
  local calls = redis.call('HINCRBY', key, 'win_calls', 1)
  if ok then
    redis.call('HSET', key, 'consecutive', 0)
    if state == 'half_open' then
      redis.call('HSET', key, 'state', 'closed', 'win_start_ms', now, 'win_calls', 0, 'win_failures', 0)
      return state, 'closed'
    end
    return state, state
  end
  local failures = redis.call('HINCRBY', key, 'win_failures', 1)
  local consecutive = redis.call('HINCRBY', key, 'consecutive', 1)
  if state == 'half_open' or (state == 'closed' and (consecutive >= threshold or
      (calls >= min_calls and failures / calls >= rate))) then
    redis.call('HSET', key, 'state', 'open', 'opened_ms', now)
    return state, 'open'
  end
  return state, state
end
