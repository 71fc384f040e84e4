-- retry_budget at Redis' clock (worker/gateway/retrybudget.py). KEYS: 1 the tool's retry budget.
-- ARGV[1]: a JSON table `a`: op ('call' or 'retry'), ratio, min_retries, window_ms.
-- Returns 1 (counted / granted) or 0.
--! include worker/now.lua
--! include worker/gateway/retry_budget.lua
local a = cjson.decode(ARGV[1])
return retry_budget(KEYS[1], a.op, a.ratio, a.min_retries, a.window_ms, math.floor(now_ms()))
