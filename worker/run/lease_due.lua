--! include worker/now.lua
local now = math.floor(now_ms())
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
