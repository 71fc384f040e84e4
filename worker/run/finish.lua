-- RunStore.finish_in's script (worker/run/store.py, _FINISH: KEYS, the named arguments `a`, and
-- the run's output (JSON) as ARGV[2]).
--! include worker/now.lua
--! include worker/run/unpark_count.lua
--! include worker/run/emit.lua
--! include worker/obs/observe.lua
--! include worker/webhooks/webhook_enqueue.lua
--! include worker/history/archive_enqueue.lua
local a = cjson.decode(ARGV[1])
local parked = redis.call('HGET', KEYS[1], 'parked') == '1'
if a.only_if == 'parked' and not parked then return {0} end
if a.only_if == 'queued' and redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return {0} end
-- '' for now: this server's clock, at the moment the run ends (a kill sweep ends a thousand
-- runs in one pipeline: each gets the time it really stopped, not the time the sweep began)
local now = a.now
if now == '' then now = string.format('%.6f', now_s()) end
redis.call('ZREM', KEYS[7], a.run_id)
redis.call('ZREM', KEYS[9], a.run_id)
if a.lease_token ~= '' then
  if redis.call('GET', KEYS[5]) == a.lease_token then redis.call('DEL', KEYS[5]) end
  redis.call('ZREM', KEYS[6], a.run_id)
end
local f = redis.call('HMGET', KEYS[1], 'status', 'started_ts', 'steps', 'tool_calls', 'agent', 'version',
                    'tenant', 'created_ts')
local s = f[1]
if not s then return {0} end
if s == 'succeeded' or s == 'stopped' or s == 'failed' or s == 'cancelled' then return {0} end
if s == 'queued' and f[7] and f[8] then
  redis.call('ZREM', KEYS[8], f[7] .. '|' .. f[8] .. '|' .. a.run_id)
end
local started, steps = f[2], f[3] or '0'
if not started and a.status ~= 'cancelled' then
  started = now
  redis.call('HSET', KEYS[1], 'started_ts', started)
end
if a.steps ~= '' then steps = a.steps end
if parked then
  redis.call('HDEL', KEYS[1], 'parked')
  unpark_count(KEYS[10], f[7])
  unpark_count(KEYS[11], f[5])
end
redis.call('HSET', KEYS[1], 'status', a.status, 'stop_reason', a.stop_reason, 'output', ARGV[2],
           'error', a.error, 'finished_ts', now, 'steps', steps)
-- the working state (last tool result, agent memory) is of no use once the run has ended
redis.call('HDEL', KEYS[1], 'last_result', 'memory', 'pending', 'wait', 'wait_reply')
redis.call('EXPIRE', KEYS[1], a.ttl_s)
redis.call('EXPIRE', KEYS[3], a.ttl_s)
redis.call('HINCRBY', KEYS[4], 'runs|' .. a.status .. '|' .. a.stop_reason, 1)
redis.call('HINCRBY', KEYS[4], 'usage|steps', tonumber(steps))
redis.call('HINCRBY', KEYS[4], 'usage|tool_calls', tonumber(f[4] or '0'))
emit(KEYS[12], false, a.events_max, a.ttl_s, 'status', a.status_data)
emit(KEYS[12], false, a.events_max, a.ttl_s, 'end', '')
webhook_enqueue(KEYS[1], KEYS[13], KEYS[14], KEYS[15], 'end', a.delivery_id, a.run_id, f[7] or '', now, '')
archive_enqueue(KEYS[16], KEYS[17], a.run_id, now)
if a.observe and f[2] and f[5] then
  local agent = string.gsub(f[5], '|', '_')
  observe(KEYS[18], agent .. '|' .. a.status, math.max(0, tonumber(now) - tonumber(f[2])))
end
redis.call('PUBLISH', KEYS[2], a.status)
return {1, f[5], f[6], started, now}
