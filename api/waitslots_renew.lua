-- KEYS[1] = the tenant's waiters zset. ARGV[1]: a JSON table `a`: hold_s (the slot's new
-- length), member (the slot's). Returns 1 when the slot was still held (and now lapses later),
-- 0 when it had lapsed.
--! include worker/now.lua
local a = cjson.decode(ARGV[1])
if not redis.call('ZSCORE', KEYS[1], a.member) then return 0 end
local now = now_s()
redis.call('ZADD', KEYS[1], string.format('%.6f', now + a.hold_s), a.member)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now) + 1)
return 1
