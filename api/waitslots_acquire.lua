-- KEYS[1] = the tenant's waiters zset. ARGV[1]: a JSON table `a`: limit, hold_s (the slot's
-- length), member (the slot's). Returns {1, slots held} when the slot was taken, else
-- {0, the number of slots held}.
--! include worker/now.lua
local a = cjson.decode(ARGV[1])
local now = now_s()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= a.limit then return {0, held} end
redis.call('ZADD', KEYS[1], string.format('%.6f', now + a.hold_s), a.member)
-- the set lives as long as its longest slot, so an idle tenant leaves no key behind
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now) + 1)
return {1, held + 1}
