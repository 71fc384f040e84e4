-- The admission script's start (worker/gateway/checks.py builds the script: this, then each check
-- of ADMISSION in order, then go.lua). KEYS and the named arguments `a`: see checks.py.
--! include worker/control/kill_reason.lua
--! include worker/now.lua
--! include worker/control/policy_read.lua
--! include worker/control/quota_reserve.lua
--! include worker/control/quota_refund.lua
--! include worker/run/budget_reserve.lua
--! include worker/gateway/retry_budget.lua
--! include worker/gateway/gcra.lua
--! include worker/gateway/breaker_allow.lua
local a = cjson.decode(ARGV[1])
local stage, kind = a.stage, a.kind
local now = now_ms()
local now_int = math.floor(now)
local approved = ''  -- the human's decision, once the call has passed its approval
local quota, max_a, max_s, used = '', -1, -1, 0
local function answer(verdict, d1, d2)
  return {verdict, quota, max_a, max_s, used, d1 or '', d2 or '', approved}
end
