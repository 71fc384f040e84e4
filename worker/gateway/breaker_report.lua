-- breaker_record at Redis' clock (worker/gateway/breaker.py). KEYS: 1 the breaker. ARGV[1]: a JSON
-- table `a`: ok (boolean), breaker (BreakerPolicy.record_fields: threshold, rate, min_calls,
-- window_ms). Returns {state before, state after}.
--! include worker/now.lua
--! include worker/gateway/breaker_record.lua
local a = cjson.decode(ARGV[1])
local b = a.breaker
local before, after = breaker_record(KEYS[1], a.ok, b.threshold, b.rate, b.min_calls, b.window_ms,
                                     math.floor(now_ms()))
return {before, after}
