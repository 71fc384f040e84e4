-- The tool worker's checks right before a tool runs, and the attempt's slot, in one trip: KEYS,
-- the named arguments `a` and the answers are described in worker/gateway/executor.py (BeforeTool).
--! include worker/control/kill_reason.lua
--! include worker/gateway/acquire_slot.lua
local a = cjson.decode(ARGV[1])
local run = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'agent')
if not run[1] or not run[2] or not run[3] then return {'norun'} end
if run[2] ~= a.tenant or run[3] ~= a.agent then return {'other', run[2], run[3]} end
for _, status in ipairs(a.ended) do
  if run[1] == status then return {'ended'} end
end
local reason = kill_reason({unpack(KEYS, 4)})
if reason then return {'killed', reason} end
local call = redis.call('HMGET', KEYS[2], 'attempt', 'result')
if call[2] then return {'final', call[2]} end
if call[1] and tonumber(call[1]) > tonumber(a.attempt) then return {'stale', call[1]} end
if not acquire_slot(KEYS[3], a.member, a.limit, a.life_ms) then return {'busy'} end
if call[1] then redis.call('HSET', KEYS[2], 'taken', a.attempt) end  -- the run's call record, if any
return {'go'}
