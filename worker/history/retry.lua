local now, first, longest = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) then
    local failures = redis.call('HINCRBY', KEYS[2], id, 1)
    local delay = math.min(longest, first * 2 ^ math.min(failures - 1, 30))
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.6f', now + delay), id)
  end
end
redis.call('HINCRBY', KEYS[3], 'failed', 1)
