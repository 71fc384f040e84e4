--! include worker/now.lua
local function acquire_slot(key, member, limit, life_ms)
  local now = math.floor(now_ms())
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZSCORE', key, member) == false and redis.call('ZCARD', key) >= limit then
    return false
  end
  redis.call('ZADD', key, now + life_ms, member)
  if redis.call('PTTL', key) < life_ms then redis.call('PEXPIRE', key, life_ms) end
  return true
end
