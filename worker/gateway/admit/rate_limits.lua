local wait = 0
for i, limit in ipairs(a.limits) do
  local allowed, w = gcra(KEYS[15 + i], limit.interval_ms, limit.burst, a.remaining_ms, limit.cost, now)
  if allowed == 0 then return answer('rate_limited', tostring(w), i - 1) end
  if w > wait then wait = w end
end
if wait > 0 then
  redis.call('HINCRBY', KEYS[15], a.wait_stat, 1)
  return answer('wait', tostring(wait))
end
