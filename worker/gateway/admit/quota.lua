if max_a >= 0 or max_s >= 0 then
  quota = quota_reserve(KEYS[8], KEYS[9], KEYS[10], a.call_id, max_a, max_s, a.cost_micro,
                        a.decision_ttl_s, now_int)
  if string.sub(quota, 1, 7) ~= 'allowed' then return answer('quota') end
end
