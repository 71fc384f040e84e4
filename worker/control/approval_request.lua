--! include worker/run/emit.lua
--! include worker/webhooks/webhook_enqueue.lua
local a = cjson.decode(ARGV[1])
local decided = redis.call('HGET', KEYS[1], 'approval:' .. a.call_id)
if decided then return {'decided', decided} end
local f = redis.call('HMGET', KEYS[1], 'status', 'approval')
if f[1] ~= 'running' then return {'ended', f[1] or ''} end
-- every ask (also a resumed run's again) moves the reaper's deadline: the start script set it
-- from the clock of that moment
redis.call('ZADD', KEYS[3], a.reaper_deadline, a.run_id)
if f[2] then
  local ok, cur = pcall(cjson.decode, f[2])
  if ok and type(cur) == 'table' and cur['call_id'] == a.call_id then return {'pending', f[2]} end
end
redis.call('HSET', KEYS[1], 'approval', a.request, 'approval_since', a.since)
redis.call('ZADD', KEYS[2], a.since, a.run_id)
emit(KEYS[4], KEYS[5], a.events_max, a.run_ttl_s, 'approval_requested', a.shown)
webhook_enqueue(KEYS[1], KEYS[6], KEYS[7], KEYS[8], 'approval_requested', a.delivery_id, a.run_id, a.tenant,
                a.since, a.shown)
return {'pending', a.request}
