--! include worker/now.lua
--! include worker/control/kill_reason.lua
--! include worker/run/unpark_count.lua
--! include worker/run/emit.lua
--! include worker/obs/observe.lua
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing'} end
if s ~= 'queued' and s ~= 'running' then return {'terminal', s} end
local owner = redis.call('HMGET', KEYS[1], 'tenant', 'agent')
if owner[1] ~= ARGV[6] or owner[2] ~= ARGV[7] then return {'missing'} end
local park = redis.call('HMGET', KEYS[1], 'parked', 'park_seq')
if ARGV[8] ~= '' and (park[1] ~= '1' or park[2] ~= ARGV[8]) then return {'stale'} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] and holder ~= ARGV[5] then return {'leased', holder} end
local now = math.floor(now_ms())
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[4])
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_ts', ARGV[1])
  emit(KEYS[10], KEYS[11], ARGV[10], ARGV[11], 'status', ARGV[9])
  local created = tonumber(redis.call('HGET', KEYS[1], 'created_ts') or '')
  if ARGV[12] ~= '' and created then observe(KEYS[12], ARGV[12], math.max(0, tonumber(ARGV[1]) - created)) end
end
if park[1] == '1' then
  redis.call('HDEL', KEYS[1], 'parked')
  redis.call('ZREM', KEYS[7], ARGV[4])
  unpark_count(KEYS[8], ARGV[6])
  unpark_count(KEYS[9], ARGV[7])
else
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
local raw = redis.call('HGETALL', KEYS[1])
local run = {}
for i = 1, #raw, 2 do run[raw[i]] = raw[i + 1] end
if s == 'queued' then
  redis.call('ZREM', KEYS[6], run['tenant'] .. '|' .. (run['created_ts'] or '') .. '|' .. ARGV[4])
end
-- the time waiting for a human is not the run's: paused_s, and the clock stops while it waits
local deadline = tonumber(run['started_ts']) + tonumber(cjson.decode(run['budgets'])['max_seconds'])
  + tonumber(run['paused_s'] or '0')
if run['approval_since'] then
  deadline = deadline + math.max(0, tonumber(ARGV[1]) - tonumber(run['approval_since']))
end
redis.call('ZADD', KEYS[4], string.format('%.6f', deadline), ARGV[4])
return {'started', raw, {kill_reason({unpack(KEYS, 13)}), redis.call('GET', KEYS[5])}}
