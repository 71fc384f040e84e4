-- Timers.claim_due's script (worker/run/timers.py, _CLAIM: KEYS and the named arguments `a`).
local a = cjson.decode(ARGV[1])
local now = a.now
local claimed = {}
for i = 2, #KEYS do
  local run_id = a.run_ids[i - 1]
  local score = redis.call('ZSCORE', KEYS[1], run_id)
  if score and tonumber(score) <= now then
    local f = redis.call('HMGET', KEYS[i], 'parked', 'park_seq', 'started_ts', 'budgets', 'paused_s',
                         'approval_since')
    if f[1] ~= '1' or not f[3] or not f[4] then
      redis.call('ZREM', KEYS[1], run_id)
    else
      redis.call('ZADD', KEYS[1], string.format('%.6f', now + a.claim_s), run_id)
      -- the time waiting for a human is not the run's: paused_s, and the clock stops meanwhile
      local deadline = tonumber(f[3]) + tonumber(cjson.decode(f[4])['max_seconds']) + tonumber(f[5] or '0')
      if f[6] then deadline = deadline + math.max(0, now - tonumber(f[6])) end
      table.insert(claimed, run_id)
      table.insert(claimed, f[2])
      table.insert(claimed, string.format('%.6f', deadline))
    end
  end
end
return claimed
