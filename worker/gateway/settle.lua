-- KEYS: 1 the call's hash, 2 the breaker, 3 the tools' stats hash. ARGV: 1 ok (1/0), 2-5 the
-- breaker's threshold, rate, min calls, window ms; 6 final (1/0), 7 the result, 8 its TTL,
-- 9 the stats field, 10 the attempt when no reply came for it ('' otherwise), 11 the result to
-- record instead of 7 if no tool worker took that attempt. An attempt no tool worker took (the
-- call's `taken`, set by the tool worker's checks) timed out in the fleet's own queue: the
-- dependency was never asked, so the breaker does not count it. Returns the breaker's states
-- before and after, a result recorded already, and whether a tool worker took the attempt.
--! include worker/gateway/settle_fn.lua
local taken = ARGV[10] == '' or redis.call('HGET', KEYS[1], 'taken') == ARGV[10]
local result = ARGV[7]
if not taken then result = ARGV[11] end
local _, before, after, existing = settle(KEYS[1], KEYS[2], KEYS[3], '', ARGV[1] == '1', tonumber(ARGV[2]),
                                          tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
                                          ARGV[6] == '1', result, ARGV[8], ARGV[9], taken)
return {before, after, existing, taken and 1 or 0}
