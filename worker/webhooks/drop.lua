-- drop(hook, due, born, stats, id, outcome): removes a delivery and counts its outcome.
local function drop(hook, due, born, stats, id, outcome)
  redis.call('DEL', hook)
  redis.call('ZREM', due, id)
  redis.call('ZREM', born, id)
  redis.call('HINCRBY', stats, 'deliveries|' .. outcome, 1)
end
