--! include worker/run/count_cost.lua
local tokens = redis.call('HGET', KEYS[2], 'tokens')
if not tokens or redis.call('HGET', KEYS[2], 'settled') then return 0 end
redis.call('HINCRBY', KEYS[1], 'tokens_reserved', -tonumber(tokens))
redis.call('HINCRBY', KEYS[1], 'cost_reserved', -tonumber(redis.call('HGET', KEYS[2], 'cost')))
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'cost_micro', ARGV[2])
redis.call('HSET', KEYS[2], 'settled', 1)
count_cost(KEYS[1], KEYS[3], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then
  if tonumber(ARGV[5]) > 0 then redis.call('HINCRBY', KEYS[3], 'tokens|' .. ARGV[4] .. '|input', ARGV[5]) end
  if tonumber(ARGV[6]) > 0 then redis.call('HINCRBY', KEYS[3], 'tokens|' .. ARGV[4] .. '|output', ARGV[6]) end
end
return 1
