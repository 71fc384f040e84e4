local function policy_read(key)
  local raw = redis.call('GET', key)
  if not raw or raw == '' then return false, -1, -1, false end
  local deny = function() return {}, 0, -1, false end
  local ok, p = pcall(cjson.decode, raw)
  if not ok or type(p) ~= 'table' or not string.match(raw, '^%s*{') then return deny() end
  local tools, max_actions, max_spend, approve = false, -1, -1, false
  local function names(v)
    if type(v) ~= 'table' then return nil end
    local n, set = 0, {}
    for _, tool in pairs(v) do
      if type(tool) ~= 'string' or #tool > 200 or not string.match(tool, '^[%w_.:-]+$') then return nil end
      set[tool] = true
      n = n + 1
    end
    if n ~= #v then return nil end
    return set
  end
  for name, v in pairs(p) do
    if name == 'allowed_tools' or name == 'approve_tools' then
      if v ~= cjson.null then
        local set = names(v)
        if not set then return deny() end
        if name == 'allowed_tools' then tools = set else approve = set end
      end
    elseif name == 'max_actions_per_hour' then
      if v ~= cjson.null then
        if type(v) ~= 'number' or v < 0 or math.floor(v) ~= v then return deny() end
        max_actions = v
      end
    elseif name == 'max_spend_usd_per_day' then
      if v ~= cjson.null then
        if type(v) ~= 'number' or v < 0 or v ~= v or v > 1000000 then return deny() end
        max_spend = math.floor(v * 1000000 + 0.5)
      end
    else
      return deny()
    end
  end
  return tools, max_actions, max_spend, approve
end
