local a = cjson.decode(ARGV[1])
local settled = redis.call('ZREM', KEYS[2], a.run_id)
redis.call('ZREM', KEYS[1], a.run_id)
redis.call('HDEL', KEYS[3], a.run_id)
local hot = a.hot_ttl_s
if a.outcome == 'archived' then
  for i = 5, #KEYS do
    local ttl = redis.call('TTL', KEYS[i])
    if ttl == -1 or ttl > hot then redis.call('EXPIRE', KEYS[i], hot) end
  end
end
if settled == 1 then redis.call('HINCRBY', KEYS[4], a.outcome, 1) end
return settled
