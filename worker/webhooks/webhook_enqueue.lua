local function webhook_enqueue(run, hook, due, born, event, id, run_id, tenant, now, data)
  local spec = redis.call('HGET', run, 'webhook')
  if not spec then return end
  local ok, parsed = pcall(cjson.decode, spec)
  if not ok or type(parsed) ~= 'table' or type(parsed['events']) ~= 'table' then return end
  local wanted = false
  for _, name in ipairs(parsed['events']) do
    if name == event then wanted = true end
  end
  if not wanted then return end
  redis.call('HSET', hook, 'run_id', run_id, 'tenant', tenant, 'url', parsed['url'], 'event', event,
             'data', data, 'first_ts', now, 'attempts', 0, 'claims', 0)
  redis.call('ZADD', due, now, id)
  redis.call('ZADD', born, now, id)
end
