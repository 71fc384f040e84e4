-- RunStore.cancel's script (worker/run/store.py, _CANCEL: KEYS and the named arguments `a`).
--! include worker/run/emit.lua
--! include worker/webhooks/webhook_enqueue.lua
--! include worker/history/archive_enqueue.lua
local a = cjson.decode(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'created_ts')
local s = f[1]
if not s then return nil end
if s == 'queued' then
  if f[2] and f[3] then redis.call('ZREM', KEYS[5], f[2] .. '|' .. f[3] .. '|' .. a.run_id) end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'stop_reason', 'cancelled', 'finished_ts', a.now)
  redis.call('HINCRBY', KEYS[4], 'runs|cancelled|cancelled', 1)
  emit(KEYS[8], false, a.events_max, a.ttl_s, 'status', a.status_data)
  emit(KEYS[8], false, a.events_max, a.ttl_s, 'end', '')
  webhook_enqueue(KEYS[1], KEYS[9], KEYS[10], KEYS[11], 'end', a.delivery_id, a.run_id, f[2] or '', a.now, '')
  archive_enqueue(KEYS[12], KEYS[13], a.run_id, a.now)
  redis.call('PUBLISH', KEYS[3], 'cancelled')
elseif s == 'running' then
  redis.call('SET', KEYS[2], 'cancelled by request', 'EX', a.cancel_ttl_s)
  if redis.call('HGET', KEYS[1], 'parked') == '1' then
    redis.call('ZADD', KEYS[6], 0, a.run_id)
    redis.call('LPUSH', KEYS[7], a.run_id)
    redis.call('LTRIM', KEYS[7], 0, 63)
  end
end
return s
