-- KEYS[1] = the tenant's waiters zset. ARGV: the slot's new length (s), its member.
-- Returns 1 when the slot was still held (and now lapses later), 0 when it had lapsed.
--! include worker/now.lua
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local now = now_s()
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[1])), ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now) + 1)
return 1
