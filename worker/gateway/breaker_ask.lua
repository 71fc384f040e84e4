--! include worker/now.lua
--! include worker/gateway/breaker_allow.lua
local allowed, state, retry_ms = breaker_allow(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]),
                                               math.floor(now_ms()))
return {allowed, state, retry_ms}
