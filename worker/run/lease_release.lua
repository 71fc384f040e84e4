-- Leases.release's script (worker/run/lease.py, _RELEASE: KEYS and the named arguments `a`).
local a = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[1]) == a.token then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], a.run_id)
return 1
