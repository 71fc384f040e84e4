-- count_cost(run, stats, micro, by_tenant): counts a charge in the fleet's spend stats
-- (worker/obs/histograms.py): `cost|<agent>`, or `cost|<agent>|<tenant>` when by_tenant is true, in
-- micro-dollars.
local function count_cost(k_run, k_stats, micro, by_tenant)
  if tonumber(micro) <= 0 then return end
  local owner = redis.call('HMGET', k_run, 'agent', 'tenant')
  if not owner[1] then return end
  local field = 'cost|' .. string.gsub(owner[1], '|', '_')
  if by_tenant then field = field .. '|' .. string.gsub(owner[2] or '', '|', '_') end
  redis.call('HINCRBY', k_stats, field, micro)
end
