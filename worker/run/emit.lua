local function emit(stream, channel, maxlen, ttl, name, data)
  redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'event', name, 'data', data)
  redis.call('EXPIRE', stream, ttl)
  if channel then redis.call('PUBLISH', channel, name) end
end
