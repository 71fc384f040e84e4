-- Redis' clock, so every worker of the fleet shares one (each call reads TIME once).
-- now_ms(): milliseconds, with the microseconds as the fraction; math.floor(now_ms()) is the
-- whole milliseconds. now_s(): seconds, with the microseconds as the fraction;
-- string.format('%.6f', now_s()) is the TIME reply's seconds.microseconds exactly.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
