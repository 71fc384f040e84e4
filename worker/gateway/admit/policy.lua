local tools
tools, max_a, max_s, a.approve_tools = policy_read(KEYS[7])
if tools and not tools[a.tool] then return answer('denied', 'policy') end
