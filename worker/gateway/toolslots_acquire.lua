--! include worker/gateway/acquire_slot.lua
return acquire_slot(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])) and 1 or 0
