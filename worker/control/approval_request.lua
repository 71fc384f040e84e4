--! include worker/run/emit.lua
--! include worker/webhooks/webhook_enqueue.lua
local decided = redis.call('HGET', KEYS[1], 'approval:' .. ARGV[1])
if decided then return {'decided', decided} end
local f = redis.call('HMGET', KEYS[1], 'status', 'approval')
if f[1] ~= 'running' then return {'ended', f[1] or ''} end
-- every ask (also a resumed run's again) moves the reaper's deadline: the start script set it
-- from the clock of that moment
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
if f[2] then
  local ok, cur = pcall(cjson.decode, f[2])
  if ok and type(cur) == 'table' and cur['call_id'] == ARGV[1] then return {'pending', f[2]} end
end
redis.call('HSET', KEYS[1], 'approval', ARGV[2], 'approval_since', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
emit(KEYS[4], KEYS[5], ARGV[6], ARGV[7], 'approval_requested', ARGV[10])
webhook_enqueue(KEYS[1], KEYS[6], KEYS[7], KEYS[8], 'approval_requested', ARGV[8], ARGV[4], ARGV[9], ARGV[3],
                ARGV[10])
return {'pending', ARGV[2]}
