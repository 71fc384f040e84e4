-- breaker_allow at Redis' clock (worker/gateway/breaker.py). KEYS: 1 the breaker. ARGV[1]: a JSON
-- table `a`: cooldown_ms, probe_ms (the probe's timeout). Returns {allowed (0/1), state, retry_in_ms}.
--! include worker/now.lua
--! include worker/gateway/breaker_allow.lua
local a = cjson.decode(ARGV[1])
local allowed, state, retry_ms = breaker_allow(KEYS[1], a.cooldown_ms, a.probe_ms, math.floor(now_ms()))
return {allowed, state, retry_ms}
