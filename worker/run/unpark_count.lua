-- unpark_count(hash, field): one parked run less for a tenant or agent (Keys.parked_owners),
-- the counts the kill sweep reads.
local function unpark_count(key, field)
  if field and redis.call('HINCRBY', key, field, -1) <= 0 then redis.call('HDEL', key, field) end
end
