local bucket = math.floor(tonumber(ARGV[6]) / 60)
local oldest = bucket - math.floor(tonumber(ARGV[3]) / 60) + 1
redis.call('HINCRBY', KEYS[1], bucket .. ':ended', 1)
if ARGV[1] ~= 'ok' then redis.call('HINCRBY', KEYS[1], bucket .. ':' .. ARGV[1], 1) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]) + 120)
redis.call('HINCRBY', KEYS[3], 'runs|' .. ARGV[7] .. '|' .. ARGV[2] .. '|' .. ARGV[1], 1)
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
if ARGV[2] ~= 'canary' then return 0 end
local state = redis.call('HGET', KEYS[2], 'state') or 'active'
if state ~= 'active' then return 0 end
if ended >= tonumber(ARGV[4]) and errors / ended > tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[2], 'state', 'rolled_back', 'percent', 0, 'reason',
    string.format('error rate %d/%d over %s', errors, ended, ARGV[5]), 'changed_at', ARGV[6])
  redis.call('HINCRBY', KEYS[2], 'rollbacks', 1)
  redis.call('HINCRBY', KEYS[3], 'rollbacks|' .. ARGV[7], 1)
  return 1
end
return 0
