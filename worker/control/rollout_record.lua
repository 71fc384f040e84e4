local a = cjson.decode(ARGV[1])
local max_error_rate = tonumber(a.max_error_rate)
local bucket = math.floor(a.now_s / 60)
local oldest = bucket - math.floor(a.window_s / 60) + 1
redis.call('HINCRBY', KEYS[1], bucket .. ':ended', 1)
if a.outcome ~= 'ok' then redis.call('HINCRBY', KEYS[1], bucket .. ':' .. a.outcome, 1) end
redis.call('EXPIRE', KEYS[1], a.window_s + 120)
redis.call('HINCRBY', KEYS[3], 'runs|' .. a.agent .. '|' .. a.version .. '|' .. a.outcome, 1)
local ended, errors = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local b, kind = string.match(fields[i], '^(%-?%d+):(%a+)$')
  b = tonumber(b)
  if b and b < oldest then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif kind == 'ended' then ended = ended + tonumber(fields[i + 1])
  elseif kind == 'error' then errors = errors + tonumber(fields[i + 1]) end
end
if a.version ~= 'canary' then return 0 end
local state = redis.call('HGET', KEYS[2], 'state') or 'active'
if state ~= 'active' then return 0 end
if ended >= a.min_runs and errors / ended > max_error_rate then
  redis.call('HSET', KEYS[2], 'state', 'rolled_back', 'percent', 0, 'reason',
    string.format('error rate %d/%d over %s', errors, ended, a.max_error_rate), 'changed_at', a.now_s)
  redis.call('HINCRBY', KEYS[2], 'rollbacks', 1)
  redis.call('HINCRBY', KEYS[3], 'rollbacks|' .. a.agent, 1)
  return 1
end
return 0
