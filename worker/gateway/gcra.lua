local function gcra(key, interval, burst, max_wait, cost, now)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  -- admission looks at the schedule as it is; the cost (e.g. a call's tokens) pushes it forward
  local wait = tat - (burst - 1) * interval - now
  if wait < 0 then wait = 0 end
  if wait > max_wait then return 0, wait end
  local new_tat = tat + cost * interval
  redis.call('SET', key, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  return 1, wait
end
