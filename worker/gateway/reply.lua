-- The tool worker's reply. KEYS: 1 the reply list, 2-4 as settle.lua's, 5 the run's hash, 6 the timers
-- zset, 7 the schedulers' bell, 8 the tool's slots (toolslots.py). ARGV: 1 the envelope (JSON),
-- 2 the reply's TTL, 3 the attempt, 4 settle here (1/0: only when this attempt ran the tool), 5-10
-- as settle.lua's 1-6, 11-12 as its 8-9 (the result is the envelope), 13 the run id, 14 the slot's
-- member ('' when the attempt took none), 15 the series of the attempt's duration in the histogram
-- KEYS[9] ('' for none: the tool did not run, or histograms are off), 16 that duration (s). The reply
-- says whether the bookkeeping is done.
-- A run parked on this reply (worker/run/timers.py) is made due and the bell rung: a scheduler resumes
-- it at once. The attempt's slot is given back in the same trip.
--! include worker/gateway/settle_fn.lua
--! include worker/obs/observe.lua
local settled, before, after = 0, '', ''
if ARGV[4] == '1' then
  settled, before, after = settle(KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[5] == '1', tonumber(ARGV[6]),
                                  tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]),
                                  ARGV[10] == '1', ARGV[1], ARGV[11], ARGV[12], true)
end
redis.call('RPUSH', KEYS[1], '{"settled": ' .. (settled == 1 and 'true' or 'false') .. ', "envelope": ' ..
           ARGV[1] .. '}')
redis.call('EXPIRE', KEYS[1], ARGV[2])
local park = redis.call('HMGET', KEYS[5], 'parked', 'wait_reply')
if park[1] == '1' and park[2] == KEYS[1] then
  redis.call('ZADD', KEYS[6], 'XX', 0, ARGV[13])
  redis.call('LPUSH', KEYS[7], ARGV[13])
  redis.call('LTRIM', KEYS[7], 0, 63)
end
if ARGV[14] ~= '' then redis.call('ZREM', KEYS[8], ARGV[14]) end
if ARGV[15] ~= '' then observe(KEYS[9], ARGV[15], tonumber(ARGV[16])) end
return {settled, before, after}
