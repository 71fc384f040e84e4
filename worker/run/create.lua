--! include worker/control/kill_reason.lua
--! include worker/run/emit.lua
local reason = kill_reason({unpack(KEYS, 5)})
if reason then return {'killed', reason} end
if tonumber(ARGV[2]) >= 0 then
  local depth = redis.call('LLEN', KEYS[2])
  if depth >= tonumber(ARGV[2]) then return {'queue_full', tostring(depth)} end
end
-- members are '<tenant>|<created_ts>|<run id>'; a tenant name never holds '|' or '}'
local first = '[' .. ARGV[4] .. '|'
-- a run whose record expired while queued would otherwise count for ever
redis.call('ZREMRANGEBYLEX', KEYS[3], first, '(' .. ARGV[4] .. '|' .. ARGV[6])
if tonumber(ARGV[3]) >= 0 then
  local queued = redis.call('ZLEXCOUNT', KEYS[3], first, '(' .. ARGV[4] .. '}')
  if queued >= tonumber(ARGV[3]) then return {'tenant_queue_full', tostring(queued)} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
emit(KEYS[4], false, ARGV[8], ARGV[1], 'status', ARGV[7])
return {'ok', ''}
