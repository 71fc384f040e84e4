local a = cjson.decode(ARGV[1])
local now, first, longest = a.now, a.first_s, a.longest_s
for _, id in ipairs(a.run_ids) do
  if redis.call('ZSCORE', KEYS[1], id) then
    local failures = redis.call('HINCRBY', KEYS[2], id, 1)
    local delay = math.min(longest, first * 2 ^ math.min(failures - 1, 30))
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.6f', now + delay), id)
  end
end
redis.call('HINCRBY', KEYS[3], 'failed', 1)
