if redis.call('EXISTS', KEYS[2]) == 1 then return 'reserved' end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'tokens_reserved') or '0')
local cost = tonumber(redis.call('HGET', KEYS[1], 'cost_micro') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'cost_reserved') or '0')
if tokens + tonumber(ARGV[1]) > tonumber(ARGV[3]) then return 'max_tokens' end
if cost + tonumber(ARGV[2]) > tonumber(ARGV[4]) then return 'max_cost' end
redis.call('HINCRBY', KEYS[1], 'tokens_reserved', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'cost_reserved', ARGV[2])
redis.call('HSET', KEYS[2], 'tokens', ARGV[1], 'cost', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 'reserved'
