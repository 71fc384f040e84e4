-- RunStore.create's script (worker/run/store.py, _CREATE: KEYS, the named arguments `a`, and the
-- run's fields as name, value pairs from ARGV[2]).
--! include worker/control/kill_reason.lua
--! include worker/run/emit.lua
local a = cjson.decode(ARGV[1])
local reason = kill_reason({unpack(KEYS, 5)})
if reason then return {'killed', reason} end
if a.max_queued >= 0 then
  local depth = redis.call('LLEN', KEYS[2])
  if depth >= a.max_queued then return {'queue_full', tostring(depth)} end
end
-- members are '<tenant>|<created_ts>|<run id>'; a tenant name never holds '|' or '}'
local first = '[' .. a.tenant .. '|'
-- a run whose record expired while queued would otherwise count for ever
redis.call('ZREMRANGEBYLEX', KEYS[3], first, '(' .. a.tenant .. '|' .. a.expired_before)
if a.max_queued_per_tenant >= 0 then
  local queued = redis.call('ZLEXCOUNT', KEYS[3], first, '(' .. a.tenant .. '}')
  if queued >= a.max_queued_per_tenant then return {'tenant_queue_full', tostring(queued)} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], a.ttl_s)
redis.call('ZADD', KEYS[3], 0, a.member)
emit(KEYS[4], false, a.events_max, a.ttl_s, 'status', a.status_data)
return {'ok', ''}
