-- settle(call_key, breaker_key, stats_key, guard_attempt, ok, threshold, rate, min_calls, window_ms,
-- final, result, ttl_s, stats_field, report) -> settled (0/1), breaker before, after, the call's
-- result if it was already recorded. With `guard_attempt` (the tool worker's side) nothing happens
-- unless that attempt is still the call's current one and the call has no result yet: the agent
-- may have moved on (a retry) or given up (a timeout), and then it does the bookkeeping itself.
-- `report` false leaves the breaker alone (before and after are then '').
--! include worker/now.lua
--! include worker/gateway/breaker_record.lua
local function settle(k_call, k_breaker, k_stats, guard_attempt, ok, threshold, rate, min_calls, window,
                      final, result, ttl, stats_field, report)
  if guard_attempt ~= '' then
    if redis.call('HGET', k_call, 'attempt') ~= guard_attempt then return 0, '', '', false end
    if redis.call('HEXISTS', k_call, 'result') == 1 then return 0, '', '', false end
  end
  local before, after = '', ''
  if report then
    local now = math.floor(now_ms())
    before, after = breaker_record(k_breaker, ok, threshold, rate, min_calls, window, now)
  end
  if final then
    local existing = redis.call('HGET', k_call, 'result')
    if existing then return 1, before, after, existing end
    redis.call('HSET', k_call, 'state', 'done', 'result', result)
    redis.call('EXPIRE', k_call, ttl)
    redis.call('HINCRBY', k_stats, stats_field, 1)
  end
  return 1, before, after, false
end
