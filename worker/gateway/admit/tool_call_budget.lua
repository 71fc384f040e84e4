local counted, recorded
counted, used, recorded = budget_reserve(KEYS[11], KEYS[12], a.max_tool_calls, a.call_ttl_s)
if counted == 0 then
  if quota ~= '' then quota_refund(KEYS[8], KEYS[9], KEYS[10], a.call_id, a.cost_micro) end
  return answer('budget')
end
if recorded then return answer('recorded', recorded) end
