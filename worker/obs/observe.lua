-- observe(key, series, value): one observation of `value` seconds in the series `series` (label
-- values joined by '|') of the histogram hash `key`: the bucket is the smallest bound >= the
-- value, else '+Inf'. The bounds are histograms.BUCKETS_S, the `le`s histograms.LES
-- (tests/worker/test_lua_files.py holds them equal).
local hist_bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0}
local hist_les = {'0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1.0', '2.5', '5.0', '10.0', '30.0', '60.0', '120.0', '300.0', '600.0'}
local function observe(key, series, value)
  local le = '+Inf'
  for i = 1, #hist_bounds do
    if value <= hist_bounds[i] then
      le = hist_les[i]
      break
    end
  end
  redis.call('HINCRBY', key, series .. '|' .. le, 1)
  redis.call('HINCRBYFLOAT', key, series .. '|sum', string.format('%.6f', value))
end
