-- wrk script of bench/serving_load.py: GET /v1/recommendations for users read from FG_USERS (one id per
-- line), each thread walking the list from its own offset; counts non-200 answers and prints the
-- summary (latency percentiles in microseconds) as one JSON line prefixed with FGJSON. Every request
-- sends the API key of FG_KEY as a Bearer token.
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  users = {}
  for line in io.lines(os.getenv("FG_USERS")) do users[#users + 1] = line end
  n = tonumber(os.getenv("FG_N") or "20")
  position = (id - 1) * 7919
  bad = 0
  headers = {["Authorization"] = "Bearer " .. os.getenv("FG_KEY")}
end

function request()
  position = position + 1
  return wrk.format("GET", "/v1/recommendations?n=" .. n .. "&user_id=" .. users[position % #users + 1], headers)
end

function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local non200 = 0
  for _, thread in ipairs(threads) do non200 = non200 + thread:get("bad") end
  local points = {}
  for _, p in ipairs({1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9}) do
    points[#points + 1] = string.format('"%s": %d', p, latency:percentile(p))
  end
  local errors = summary.errors
  io.write(string.format(
    'FGJSON {"requests": %d, "duration_us": %d, "non200": %d, "socket_errors": %d, "timeouts": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "percentiles_us": {%s}}\n',
    summary.requests, summary.duration, non200, errors.connect + errors.read + errors.write,
    errors.timeout, latency.mean, latency.max, table.concat(points, ", ")))
end
