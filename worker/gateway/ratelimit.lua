--! include worker/now.lua
--! include worker/gateway/gcra.lua
local allowed, wait = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                           tonumber(ARGV[4]), now_ms())
return {allowed, tostring(wait)}
