local function breaker_allow(key, cooldown, probe_timeout, now)
  local state = redis.call('HGET', key, 'state') or 'closed'
  if state == 'closed' then return 1, state, 0 end
  if state == 'open' then
    local opened = tonumber(redis.call('HGET', key, 'opened_ms') or '0')
    if now - opened < cooldown then return 0, state, cooldown - (now - opened) end
    redis.call('HSET', key, 'state', 'half_open', 'probe_until_ms', now + probe_timeout)
    return 1, 'half_open', 0
  end
  local probe_until = tonumber(redis.call('HGET', key, 'probe_until_ms') or '0')
  if now < probe_until then return 0, state, probe_until - now end
  redis.call('HSET', key, 'probe_until_ms', now + probe_timeout)
  return 1, state, 0
end
