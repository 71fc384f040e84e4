--! include worker/webhooks/drop.lua
local a = cjson.decode(ARGV[1])
local now = a.now
local claimed = {}
for i = 4, #KEYS do
  local id = a.ids[i - 3]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    local first = redis.call('HGET', KEYS[i], 'first_ts')
    if not first then
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
    elseif now - tonumber(first) >= a.max_age_s then
      drop(KEYS[i], KEYS[1], KEYS[2], KEYS[3], id, 'expired')
    else
      redis.call('ZADD', KEYS[1], string.format('%.6f', now + a.lead_s), id)
      table.insert(claimed, id)
      table.insert(claimed, tostring(redis.call('HINCRBY', KEYS[i], 'claims', 1)))
    end
  end
end
return claimed
