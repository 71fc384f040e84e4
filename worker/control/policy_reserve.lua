--! include worker/now.lua
--! include worker/control/quota_reserve.lua
local decision = quota_reserve(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]),
                               tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], math.floor(now_ms()))
-- the day whose spend key was charged, so that a correction after midnight lands on it
if string.sub(decision, 1, 7) == 'allowed' then redis.call('SET', KEYS[4], ARGV[6], 'NX', 'EX', ARGV[5]) end
return decision
