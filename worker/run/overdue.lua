-- RunStore._claim_overdue's script (worker/run/store.py, _OVERDUE: KEYS and the named arguments
-- `a`).
local a = cjson.decode(ARGV[1])
local now = a.now
local claimed, held = {}, {}
for i = 2, #KEYS do
  local run_id = a.run_ids[i - 1]
  local score = redis.call('ZSCORE', KEYS[1], run_id)
  if score and tonumber(score) <= now then
    local holder = redis.call('GET', KEYS[i])
    if holder and a.takeover ~= '' and holder == a.takeover then
      redis.call('DEL', KEYS[i])
      holder = false
    end
    if holder then
      table.insert(held, run_id)
      table.insert(held, holder)
    else
      redis.call('ZADD', KEYS[1], string.format('%.6f', now + a.claim_s), run_id)
      table.insert(claimed, run_id)
    end
  end
end
return {claimed, held}
