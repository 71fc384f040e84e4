if a.approval or (a.approve_tools and a.approve_tools[a.tool]) then
  local decided = redis.call('HGET', KEYS[11], 'approval:' .. a.call_id)
  local ok, d = false, nil
  if decided then ok, d = pcall(cjson.decode, decided) end
  if not (ok and type(d) == 'table' and d['decision'] == 'approve') then
    return answer('approval', decided or '')
  end
  approved = decided
end
