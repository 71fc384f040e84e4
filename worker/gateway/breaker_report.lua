--! include worker/now.lua
--! include worker/gateway/breaker_record.lua
local before, after = breaker_record(KEYS[1], ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3]),
                                     tonumber(ARGV[4]), tonumber(ARGV[5]), math.floor(now_ms()))
return {before, after}
