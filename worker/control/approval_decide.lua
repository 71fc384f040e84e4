--! include worker/run/emit.lua
local a = cjson.decode(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'approval', 'approval_since', 'parked',
                    'wait_reply')
if not f[1] or (a.tenant ~= '' and f[2] ~= a.tenant) then return {'missing'} end
local decided = redis.call('HGET', KEYS[1], 'approval:' .. a.call_id)
if decided then return {'decided', decided} end
if not f[3] then return {'unknown'} end
local ok, cur = pcall(cjson.decode, f[3])
if not ok or type(cur) ~= 'table' or cur['call_id'] ~= a.call_id then return {'unknown'} end
if f[1] ~= 'running' then return {'ended', f[1]} end
redis.call('HSET', KEYS[1], 'approval:' .. a.call_id, a.decision)
local waited = a.now - (tonumber(f[4]) or a.now)
if waited > 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'paused_s', string.format('%.6f', waited)) end
redis.call('HDEL', KEYS[1], 'approval', 'approval_since')
redis.call('ZREM', KEYS[2], a.run_id)
redis.call('RPUSH', KEYS[3], a.decision)
redis.call('EXPIRE', KEYS[3], a.run_ttl_s)
if f[5] == '1' and f[6] == KEYS[3] then
  redis.call('ZADD', KEYS[4], 'XX', 0, a.run_id)
  redis.call('LPUSH', KEYS[5], a.run_id)
  redis.call('LTRIM', KEYS[5], 0, 63)
end
emit(KEYS[6], KEYS[7], a.events_max, a.run_ttl_s, 'approval_decided', a.decision)
return {'ok', a.decision}
