-- SpendBudget.charge_tool's script (worker/run/spend.py, _CHARGE: KEYS and the named arguments `a`).
--! include worker/run/count_cost.lua
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return 'charged' end
local cost = tonumber(redis.call('HGET', KEYS[1], 'cost_micro') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'cost_reserved') or '0')
if cost + a.cost_micro > a.max_cost_micro then return 'max_cost' end
if a.check_only then return 'fits' end
redis.call('HINCRBY', KEYS[1], 'cost_micro', a.cost_micro)
redis.call('SET', KEYS[2], a.cost_micro, 'EX', a.ttl_s)
count_cost(KEYS[1], KEYS[3], a.cost_micro, a.cost_by_tenant)
return 'charged'
