--! include worker/now.lua
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local now = math.floor(now_ms())
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
return 1
