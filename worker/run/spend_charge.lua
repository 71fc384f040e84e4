--! include worker/run/count_cost.lua
if redis.call('EXISTS', KEYS[2]) == 1 then return 'charged' end
local cost = tonumber(redis.call('HGET', KEYS[1], 'cost_micro') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'cost_reserved') or '0')
if cost + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 'max_cost' end
if ARGV[4] == '1' then return 'fits' end
redis.call('HINCRBY', KEYS[1], 'cost_micro', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
count_cost(KEYS[1], KEYS[3], ARGV[1], ARGV[5])
return 'charged'
