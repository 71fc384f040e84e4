--! include worker/now.lua
local now = math.floor(now_ms())
local claimed = {}
for i = 2, #KEYS do
  local run_id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], run_id)
  if score and tonumber(score) <= now then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl > 0 then
      redis.call('ZADD', KEYS[1], now + ttl, run_id)
    else
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), run_id)
      table.insert(claimed, run_id)
    end
  end
end
return claimed
