-- SpendBudget.reserve's script (worker/run/spend.py, _RESERVE: KEYS and the named arguments `a`).
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return 'reserved' end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'tokens_reserved') or '0')
local cost = tonumber(redis.call('HGET', KEYS[1], 'cost_micro') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'cost_reserved') or '0')
if tokens + a.tokens > a.max_tokens then return 'max_tokens' end
if cost + a.cost_micro > a.max_cost_micro then return 'max_cost' end
redis.call('HINCRBY', KEYS[1], 'tokens_reserved', a.tokens)
redis.call('HINCRBY', KEYS[1], 'cost_reserved', a.cost_micro)
redis.call('HSET', KEYS[2], 'tokens', a.tokens, 'cost', a.cost_micro)
redis.call('EXPIRE', KEYS[2], a.ttl_s)
return 'reserved'
