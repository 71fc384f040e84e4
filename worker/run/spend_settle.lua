-- SpendBudget.settle's script (worker/run/spend.py, _SETTLE: KEYS and the named arguments `a`).
--! include worker/run/count_cost.lua
local a = cjson.decode(ARGV[1])
local tokens = redis.call('HGET', KEYS[2], 'tokens')
if not tokens or redis.call('HGET', KEYS[2], 'settled') then return 0 end
redis.call('HINCRBY', KEYS[1], 'tokens_reserved', -tonumber(tokens))
redis.call('HINCRBY', KEYS[1], 'cost_reserved', -tonumber(redis.call('HGET', KEYS[2], 'cost')))
redis.call('HINCRBY', KEYS[1], 'tokens', a.tokens)
redis.call('HINCRBY', KEYS[1], 'cost_micro', a.cost_micro)
redis.call('HSET', KEYS[2], 'settled', 1)
count_cost(KEYS[1], KEYS[3], a.cost_micro, a.cost_by_tenant)
if a.model ~= '' then
  if a.input_tokens > 0 then redis.call('HINCRBY', KEYS[3], 'tokens|' .. a.model .. '|input', a.input_tokens) end
  if a.output_tokens > 0 then redis.call('HINCRBY', KEYS[3], 'tokens|' .. a.model .. '|output', a.output_tokens) end
end
return 1
