-- KEYS and the named arguments `a`: see worker/gateway/toolslots.py.
local a = cjson.decode(ARGV[1])
return redis.call('ZREM', KEYS[1], a.member)
