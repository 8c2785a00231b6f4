-- wrk script of bench/serving_load.py and bench/soak.py: GET /v1/recommendations for users read from
-- FG_USERS (one id per line), each thread walking the list from its own offset; counts every answer
-- by status and prints the summary (latency percentiles in microseconds, every failure by kind: wrk's
-- connect / read / write / timeout socket errors and each non-2xx status) as one JSON line prefixed
-- with FGJSON. Every request sends the API key of FG_KEY as a Bearer token.
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
  statuses = {}
  headers = {["Authorization"] = "Bearer " .. os.getenv("FG_KEY")}
end

function request()
  position = position + 1
  return wrk.format("GET", "/v1/recommendations?n=" .. n .. "&user_id=" .. users[position % #users + 1], headers)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local by_status = {}
  local non2xx = 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
      non2xx = non2xx + count
    end
  end
  local statuses_json = {}
  for status, count in pairs(by_status) do statuses_json[#statuses_json + 1] = string.format('"%s": %d', status, count) end
  local points = {}
  for _, p in ipairs({1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9}) do
    points[#points + 1] = string.format('"%s": %d', p, latency:percentile(p))
  end
  local errors = summary.errors
  io.write(string.format(
    'FGJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "statuses": {%s}, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"mean_us": %.1f, "max_us": %d, "percentiles_us": {%s}}\n',
    summary.requests, summary.duration, non2xx, table.concat(statuses_json, ", "),
    errors.connect, errors.read, errors.write, errors.timeout,
    latency.mean, latency.max, table.concat(points, ", ")))
end
