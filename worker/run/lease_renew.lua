-- Leases.renew's script (worker/run/lease.py, _RENEW: KEYS and the named arguments `a`).
--! include worker/now.lua
local a = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[1]) ~= a.token then return 0 end
local now = math.floor(now_ms())
redis.call('PEXPIRE', KEYS[1], a.ttl_ms)
redis.call('ZADD', KEYS[2], now + a.ttl_ms, a.run_id)
return 1
