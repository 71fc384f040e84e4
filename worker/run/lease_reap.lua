-- Leases.reap's script (worker/run/lease.py, _REAP: KEYS and the named arguments `a`).
--! include worker/now.lua
local a = cjson.decode(ARGV[1])
local now = math.floor(now_ms())
local claimed = {}
for i = 2, #KEYS do
  local run_id = a.run_ids[i - 1]
  local score = redis.call('ZSCORE', KEYS[1], run_id)
  if score and tonumber(score) <= now then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl > 0 then
      redis.call('ZADD', KEYS[1], now + ttl, run_id)
    else
      redis.call('ZADD', KEYS[1], now + a.claim_ms, run_id)
      table.insert(claimed, run_id)
    end
  end
end
return claimed
