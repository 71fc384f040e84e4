--! include worker/webhooks/drop.lua
local a = cjson.decode(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'claims', 'first_ts')
if not f[2] then return 'missing' end
local outcome = a.outcome
if outcome ~= 'delivered' and f[1] ~= a.claim then return 'stale' end
if outcome == 'failed' and a.next_ts >= tonumber(f[2]) + a.max_age_s then
  outcome = 'expired'
end
if outcome ~= 'failed' then
  drop(KEYS[1], KEYS[2], KEYS[3], KEYS[4], a.delivery_id, outcome)
  if outcome == 'gone' then redis.call('HDEL', KEYS[5], 'webhook') end
  return outcome
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[2], a.next_ts, a.delivery_id)
redis.call('HINCRBY', KEYS[4], 'deliveries|failed', 1)
return 'failed'
