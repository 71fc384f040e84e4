local allowed, state, retry_ms = breaker_allow(KEYS[14], a.breaker.cooldown_ms, a.breaker.probe_ms, now_int)
if allowed == 0 then return answer('circuit_open', state, retry_ms) end
