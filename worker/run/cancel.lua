--! include worker/run/emit.lua
--! include worker/webhooks/webhook_enqueue.lua
--! include worker/history/archive_enqueue.lua
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'created_ts')
local s = f[1]
if not s then return nil end
if s == 'queued' then
  if f[2] and f[3] then redis.call('ZREM', KEYS[5], f[2] .. '|' .. f[3] .. '|' .. ARGV[3]) end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'stop_reason', 'cancelled', 'finished_ts', ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'runs|cancelled|cancelled', 1)
  emit(KEYS[8], false, ARGV[5], ARGV[6], 'status', ARGV[4])
  emit(KEYS[8], false, ARGV[5], ARGV[6], 'end', '')
  webhook_enqueue(KEYS[1], KEYS[9], KEYS[10], KEYS[11], 'end', ARGV[7], ARGV[3], f[2] or '', ARGV[1], '')
  archive_enqueue(KEYS[12], KEYS[13], ARGV[3], ARGV[1])
  redis.call('PUBLISH', KEYS[3], 'cancelled')
elseif s == 'running' then
  redis.call('SET', KEYS[2], 'cancelled by request', 'EX', ARGV[2])
  if redis.call('HGET', KEYS[1], 'parked') == '1' then
    redis.call('ZADD', KEYS[6], 0, ARGV[3])
    redis.call('LPUSH', KEYS[7], ARGV[3])
    redis.call('LTRIM', KEYS[7], 0, 63)
  end
end
return s
