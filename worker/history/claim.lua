local a = cjson.decode(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', a.now, 'LIMIT', 0, a.limit)
local next_ts = string.format('%.6f', a.now + a.claim_s)
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', next_ts, id) end
return ids
