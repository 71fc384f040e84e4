-- KEYS and the named arguments `a`: see worker/gateway/toolslots.py.
--! include worker/gateway/acquire_slot.lua
local a = cjson.decode(ARGV[1])
return acquire_slot(KEYS[1], a.member, a.limit, a.life_ms) and 1 or 0
