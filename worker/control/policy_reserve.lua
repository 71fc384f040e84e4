--! include worker/now.lua
--! include worker/control/quota_reserve.lua
local a = cjson.decode(ARGV[1])
local decision = quota_reserve(KEYS[1], KEYS[2], KEYS[3], a.call_id, a.max_actions, a.max_spend_micro,
                               a.cost_micro, a.ttl_s, math.floor(now_ms()))
-- the day whose spend key was charged, so that a correction after midnight lands on it
if string.sub(decision, 1, 7) == 'allowed' then redis.call('SET', KEYS[4], a.day, 'NX', 'EX', a.ttl_s) end
return decision
