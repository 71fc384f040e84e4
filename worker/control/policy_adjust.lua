local marker = redis.call('GET', KEYS[3])
if not marker or string.sub(marker, 1, 7) ~= 'allowed' or string.sub(marker, -4) == '|adj' then return 0 end
redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], marker .. '|adj', 'KEEPTTL')
return 1
