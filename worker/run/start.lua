-- RunStore.start's script (worker/run/store.py, _START: KEYS and the named arguments `a`).
--! include worker/now.lua
--! include worker/control/kill_reason.lua
--! include worker/run/unpark_count.lua
--! include worker/run/emit.lua
--! include worker/obs/observe.lua
local a = cjson.decode(ARGV[1])
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing'} end
if s ~= 'queued' and s ~= 'running' then return {'terminal', s} end
local owner = redis.call('HMGET', KEYS[1], 'tenant', 'agent')
if owner[1] ~= a.tenant or owner[2] ~= a.agent then return {'missing'} end
local park = redis.call('HMGET', KEYS[1], 'parked', 'park_seq')
if a.wake ~= '' and (park[1] ~= '1' or park[2] ~= a.wake) then return {'stale'} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= a.token and holder ~= a.takeover then return {'leased', holder} end
local now = math.floor(now_ms())
redis.call('SET', KEYS[2], a.token, 'PX', a.lease_ttl_ms)
redis.call('ZADD', KEYS[3], now + a.lease_ttl_ms, a.run_id)
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_ts', a.now)
  emit(KEYS[10], KEYS[11], a.events_max, a.ttl_s, 'status', a.status_data)
  local created = tonumber(redis.call('HGET', KEYS[1], 'created_ts') or '')
  if a.queue_wait ~= '' and created then observe(KEYS[12], a.queue_wait, math.max(0, tonumber(a.now) - created)) end
end
if park[1] == '1' then
  redis.call('HDEL', KEYS[1], 'parked')
  redis.call('ZREM', KEYS[7], a.run_id)
  unpark_count(KEYS[8], a.tenant)
  unpark_count(KEYS[9], a.agent)
else
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
local raw = redis.call('HGETALL', KEYS[1])
local run = {}
for i = 1, #raw, 2 do run[raw[i]] = raw[i + 1] end
if s == 'queued' then
  redis.call('ZREM', KEYS[6], run['tenant'] .. '|' .. (run['created_ts'] or '') .. '|' .. a.run_id)
end
-- the time waiting for a human is not the run's: paused_s, and the clock stops while it waits
local deadline = tonumber(run['started_ts']) + tonumber(cjson.decode(run['budgets'])['max_seconds'])
  + tonumber(run['paused_s'] or '0')
if run['approval_since'] then
  deadline = deadline + math.max(0, tonumber(a.now) - tonumber(run['approval_since']))
end
redis.call('ZADD', KEYS[4], string.format('%.6f', deadline), a.run_id)
return {'started', raw, {kill_reason({unpack(KEYS, 13)}), redis.call('GET', KEYS[5])}}
