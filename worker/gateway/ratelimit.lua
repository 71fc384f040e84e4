-- gcra at Redis' clock, milliseconds with a fraction (worker/gateway/ratelimit.py). KEYS: 1 the
-- rate limit's key. ARGV[1]: a JSON table `a`: interval_ms, burst, max_wait_ms, cost.
-- Returns {allowed (0/1), wait_ms (text)}.
--! include worker/now.lua
--! include worker/gateway/gcra.lua
local a = cjson.decode(ARGV[1])
local allowed, wait = gcra(KEYS[1], a.interval_ms, a.burst, a.max_wait_ms, a.cost, now_ms())
return {allowed, tostring(wait)}
