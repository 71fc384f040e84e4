local run_switch = kill_reason({KEYS[1], KEYS[2], KEYS[3]})
if run_switch then return answer('stop', 'killed', run_switch) end
local cancel = redis.call('GET', KEYS[4])
if cancel then return answer('stop', 'cancelled', cancel) end
