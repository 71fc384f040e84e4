local function kill_reason(switch_keys)
  if #switch_keys == 0 then return false end
  local values = redis.call('MGET', unpack(switch_keys))
  for i = 1, #switch_keys do
    local value = values[i]
    if value then
      if value == '' then return 'kill switch on' end
      return value
    end
  end
  return false
end
