local now = tonumber(ARGV[1])
local claimed, held = {}, {}
for i = 2, #KEYS do
  local run_id = ARGV[i + 2]
  local score = redis.call('ZSCORE', KEYS[1], run_id)
  if score and tonumber(score) <= now then
    local holder = redis.call('GET', KEYS[i])
    if holder and ARGV[3] ~= '' and holder == ARGV[3] then
      redis.call('DEL', KEYS[i])
      holder = false
    end
    if holder then
      table.insert(held, run_id)
      table.insert(held, holder)
    else
      redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), run_id)
      table.insert(claimed, run_id)
    end
  end
end
return {claimed, held}
