-- KEYS: 1 the call's hash, 2 the breaker, 3 the tools' stats hash. ARGV[1]: a JSON table `a`: ok
-- (boolean), breaker (BreakerPolicy.record_fields: threshold, rate, min_calls, window_ms), final
-- (boolean), call_ttl_s (the recorded result's), stats_field, unheard_attempt (text: the attempt when
-- no reply came for it, '' otherwise). ARGV[2]: the result (JSON, recorded as it is when final),
-- ARGV[3]: the result to record instead if no tool worker took that attempt ('': ARGV[2]); the
-- results stay out of `a`, so they are not escaped twice. An attempt no tool worker took (the
-- call's `taken`, set by the tool worker's checks) timed out in the fleet's own queue: the
-- dependency was never asked, so the breaker does not count it. Returns the breaker's states
-- before and after, a result recorded already, and whether a tool worker took the attempt.
--! include worker/gateway/settle_fn.lua
local a = cjson.decode(ARGV[1])
local b = a.breaker
local taken = a.unheard_attempt == '' or redis.call('HGET', KEYS[1], 'taken') == a.unheard_attempt
local result = ARGV[2]
if not taken and ARGV[3] ~= '' then result = ARGV[3] end
local _, before, after, existing = settle(KEYS[1], KEYS[2], KEYS[3], '', a.ok, b.threshold, b.rate,
                                          b.min_calls, b.window_ms, a.final, result, a.call_ttl_s,
                                          a.stats_field, taken)
return {before, after, existing, taken and 1 or 0}
