--! include worker/webhooks/drop.lua
local f = redis.call('HMGET', KEYS[1], 'claims', 'first_ts')
if not f[2] then return 'missing' end
local outcome = ARGV[3]
if outcome ~= 'delivered' and f[1] ~= ARGV[2] then return 'stale' end
if outcome == 'failed' and tonumber(ARGV[4]) >= tonumber(f[2]) + tonumber(ARGV[5]) then
  outcome = 'expired'
end
if outcome ~= 'failed' then
  drop(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], outcome)
  if outcome == 'gone' then redis.call('HDEL', KEYS[5], 'webhook') end
  return outcome
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'deliveries|failed', 1)
return 'failed'
