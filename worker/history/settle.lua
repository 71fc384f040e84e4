local settled = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local hot = tonumber(ARGV[3])
if ARGV[2] == 'archived' then
  for i = 5, #KEYS do
    local ttl = redis.call('TTL', KEYS[i])
    if ttl == -1 or ttl > hot then redis.call('EXPIRE', KEYS[i], hot) end
  end
end
if settled == 1 then redis.call('HINCRBY', KEYS[4], ARGV[2], 1) end
return settled
