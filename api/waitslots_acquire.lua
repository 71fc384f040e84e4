-- KEYS[1] = the tenant's waiters zset. ARGV: the limit, the slot's length (s), its member.
-- Returns 1 when the slot was taken, else the number of slots held.
--! include worker/now.lua
local now = now_s()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return {0, held} end
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), ARGV[3])
-- the set lives as long as its longest slot, so an idle tenant leaves no key behind
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now) + 1)
return {1, held + 1}
