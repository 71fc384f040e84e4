local function quota_refund(k_actions, k_spend, k_marker, call_id, cost)
  local marker = redis.call('GET', k_marker)
  if not marker or string.sub(marker, 1, 7) ~= 'allowed' then return 0 end
  redis.call('ZREM', k_actions, call_id)
  redis.call('DECRBY', k_spend, cost)
  redis.call('DEL', k_marker)
  return 1
end
