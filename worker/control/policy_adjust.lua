local a = cjson.decode(ARGV[1])
local marker = redis.call('GET', KEYS[3])
if not marker or string.sub(marker, 1, 7) ~= 'allowed' or string.sub(marker, -4) == '|adj' then return 0 end
redis.call('INCRBY', KEYS[2], a.delta_micro)
redis.call('SET', KEYS[3], marker .. '|adj', 'KEEPTTL')
return 1
