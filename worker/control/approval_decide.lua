--! include worker/run/emit.lua
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'approval', 'approval_since', 'parked',
                    'wait_reply')
if not f[1] or (ARGV[5] ~= '' and f[2] ~= ARGV[5]) then return {'missing'} end
local decided = redis.call('HGET', KEYS[1], 'approval:' .. ARGV[1])
if decided then return {'decided', decided} end
if not f[3] then return {'unknown'} end
local ok, cur = pcall(cjson.decode, f[3])
if not ok or type(cur) ~= 'table' or cur['call_id'] ~= ARGV[1] then return {'unknown'} end
if f[1] ~= 'running' then return {'ended', f[1]} end
redis.call('HSET', KEYS[1], 'approval:' .. ARGV[1], ARGV[2])
local waited = tonumber(ARGV[3]) - (tonumber(f[4] or ARGV[3]) or tonumber(ARGV[3]))
if waited > 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'paused_s', string.format('%.6f', waited)) end
redis.call('HDEL', KEYS[1], 'approval', 'approval_since')
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[7])
if f[5] == '1' and f[6] == KEYS[3] then
  redis.call('ZADD', KEYS[4], 'XX', 0, ARGV[4])
  redis.call('LPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], 0, 63)
end
emit(KEYS[6], KEYS[7], ARGV[6], ARGV[7], 'approval_decided', ARGV[2])
return {'ok', ARGV[2]}
