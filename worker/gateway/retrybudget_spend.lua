--! include worker/now.lua
--! include worker/gateway/retry_budget.lua
return retry_budget(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
                    math.floor(now_ms()))
