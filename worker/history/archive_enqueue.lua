local function archive_enqueue(due, ended, run_id, now)
  redis.call('ZADD', due, now, run_id)
  redis.call('ZADD', ended, now, run_id)
end
