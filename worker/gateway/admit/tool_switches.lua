local tool_switches = {KEYS[5]}
if a.second_switch then tool_switches[2] = KEYS[6] end
local tool_switch = kill_reason(tool_switches)
if tool_switch then return answer('killed', tool_switch) end
