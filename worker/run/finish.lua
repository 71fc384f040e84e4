--! include worker/now.lua
--! include worker/run/unpark_count.lua
--! include worker/run/emit.lua
--! include worker/obs/observe.lua
--! include worker/webhooks/webhook_enqueue.lua
--! include worker/history/archive_enqueue.lua
local parked = redis.call('HGET', KEYS[1], 'parked') == '1'
if ARGV[10] == 'parked' and not parked then return {0} end
if ARGV[10] == 'queued' and redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return {0} end
-- '' for now: this server's clock, at the moment the run ends (a kill sweep ends a thousand
-- runs in one pipeline: each gets the time it really stopped, not the time the sweep began)
local now = ARGV[5]
if now == '' then now = string.format('%.6f', now_s()) end
redis.call('ZREM', KEYS[7], ARGV[8])
redis.call('ZREM', KEYS[9], ARGV[8])
if ARGV[7] ~= '' then
  if redis.call('GET', KEYS[5]) == ARGV[7] then redis.call('DEL', KEYS[5]) end
  redis.call('ZREM', KEYS[6], ARGV[8])
end
local f = redis.call('HMGET', KEYS[1], 'status', 'started_ts', 'steps', 'tool_calls', 'agent', 'version',
                    'tenant', 'created_ts')
local s = f[1]
if not s then return {0} end
if s == 'succeeded' or s == 'stopped' or s == 'failed' or s == 'cancelled' then return {0} end
if s == 'queued' and f[7] and f[8] then
  redis.call('ZREM', KEYS[8], f[7] .. '|' .. f[8] .. '|' .. ARGV[8])
end
local started, steps = f[2], f[3] or '0'
if not started and ARGV[1] ~= 'cancelled' then
  started = now
  redis.call('HSET', KEYS[1], 'started_ts', started)
end
if ARGV[9] ~= '' then steps = ARGV[9] end
if parked then
  redis.call('HDEL', KEYS[1], 'parked')
  unpark_count(KEYS[10], f[7])
  unpark_count(KEYS[11], f[5])
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'stop_reason', ARGV[2], 'output', ARGV[3],
           'error', ARGV[4], 'finished_ts', now, 'steps', steps)
-- the working state (last tool result, agent memory) is of no use once the run has ended
redis.call('HDEL', KEYS[1], 'last_result', 'memory', 'pending', 'wait', 'wait_reply')
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('HINCRBY', KEYS[4], 'runs|' .. ARGV[1] .. '|' .. ARGV[2], 1)
redis.call('HINCRBY', KEYS[4], 'usage|steps', tonumber(steps))
redis.call('HINCRBY', KEYS[4], 'usage|tool_calls', tonumber(f[4] or '0'))
emit(KEYS[12], false, ARGV[12], ARGV[6], 'status', ARGV[11])
emit(KEYS[12], false, ARGV[12], ARGV[6], 'end', '')
webhook_enqueue(KEYS[1], KEYS[13], KEYS[14], KEYS[15], 'end', ARGV[13], ARGV[8], f[7] or '', now, '')
archive_enqueue(KEYS[16], KEYS[17], ARGV[8], now)
if ARGV[14] == '1' and f[2] and f[5] then
  local agent = string.gsub(f[5], '|', '_')
  observe(KEYS[18], agent .. '|' .. ARGV[1], math.max(0, tonumber(now) - tonumber(f[2])))
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return {1, f[5], f[6], started, now}
