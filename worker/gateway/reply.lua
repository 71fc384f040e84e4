-- The tool worker's reply. KEYS: 1 the reply list, 2-4 as settle.lua's, 5 the run's hash, 6 the timers
-- zset, 7 the schedulers' bell, 8 the tool's slots (toolslots.py), 9 a histogram (obs/histograms.py).
-- ARGV[1]: a JSON table `a`: reply_ttl_s, attempt (text, as the call's `attempt`), settle (boolean:
-- settle here, only when this attempt ran the tool), ok, breaker, final, call_ttl_s, stats_field (as
-- settle.lua's), run_id, member (the slot's, '' when the attempt took none), series (of the attempt's
-- duration in the histogram KEYS[9], '' for none: the tool did not run, or histograms are off),
-- duration_s. ARGV[2]: the envelope (JSON), pushed as it is and, when final, recorded as the call's
-- result; it stays out of `a`, so it is not escaped twice. The reply says whether the bookkeeping is
-- done.
-- A run parked on this reply (worker/run/timers.py) is made due and the bell rung: a scheduler resumes
-- it at once. The attempt's slot is given back in the same trip.
--! include worker/gateway/settle_fn.lua
--! include worker/obs/observe.lua
local a = cjson.decode(ARGV[1])
local envelope = ARGV[2]
local settled, before, after = 0, '', ''
if a.settle then
  local b = a.breaker
  settled, before, after = settle(KEYS[2], KEYS[3], KEYS[4], a.attempt, a.ok, b.threshold, b.rate,
                                  b.min_calls, b.window_ms, a.final, envelope, a.call_ttl_s,
                                  a.stats_field, true)
end
redis.call('RPUSH', KEYS[1], '{"settled": ' .. (settled == 1 and 'true' or 'false') .. ', "envelope": ' ..
           envelope .. '}')
redis.call('EXPIRE', KEYS[1], a.reply_ttl_s)
local park = redis.call('HMGET', KEYS[5], 'parked', 'wait_reply')
if park[1] == '1' and park[2] == KEYS[1] then
  redis.call('ZADD', KEYS[6], 'XX', 0, a.run_id)
  redis.call('LPUSH', KEYS[7], a.run_id)
  redis.call('LTRIM', KEYS[7], 0, 63)
end
if a.member ~= '' then redis.call('ZREM', KEYS[8], a.member) end
if a.series ~= '' then observe(KEYS[9], a.series, a.duration_s) end
return {settled, before, after}
