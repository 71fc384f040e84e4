--! include worker/control/kill_reason.lua
--! include worker/gateway/acquire_slot.lua
local run = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'agent')
if not run[1] or not run[2] or not run[3] then return {'norun'} end
if run[2] ~= ARGV[1] or run[3] ~= ARGV[2] then return {'other', run[2], run[3]} end
for i = 7, #ARGV do
  if run[1] == ARGV[i] then return {'ended'} end
end
local reason = kill_reason({unpack(KEYS, 4)})
if reason then return {'killed', reason} end
local call = redis.call('HMGET', KEYS[2], 'attempt', 'result')
if call[2] then return {'final', call[2]} end
if call[1] and tonumber(call[1]) > tonumber(ARGV[3]) then return {'stale', call[1]} end
if not acquire_slot(KEYS[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])) then return {'busy'} end
if call[1] then redis.call('HSET', KEYS[2], 'taken', ARGV[3]) end  -- the run's call record, if any
return {'go'}
