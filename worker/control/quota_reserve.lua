local function quota_reserve(k_actions, k_spend, k_marker, call_id, max_actions, max_spend, cost, ttl, now)
  local marker = redis.call('GET', k_marker)
  if marker then return marker end
  local actions = 0
  if max_actions >= 0 then
    redis.call('ZREMRANGEBYSCORE', k_actions, '-inf', now - 3600000)
    actions = redis.call('ZCARD', k_actions)
  end
  local spent = tonumber(redis.call('GET', k_spend) or '0')
  local verdict = 'allowed'
  if max_actions >= 0 and actions >= max_actions then
    verdict = 'max_actions_per_hour'
  elseif max_spend >= 0 and spent + cost > max_spend then
    verdict = 'max_spend_usd_per_day'
  end
  if verdict == 'allowed' then
    if max_actions >= 0 then
      redis.call('ZADD', k_actions, now, call_id)
      redis.call('PEXPIRE', k_actions, 3600000)
      actions = actions + 1
    end
    spent = redis.call('INCRBY', k_spend, cost)
    redis.call('EXPIRE', k_spend, 2 * 86400)
  end
  local decision = verdict .. '|' .. actions .. '|' .. spent
  redis.call('SET', k_marker, decision, 'EX', ttl)
  return decision
end
