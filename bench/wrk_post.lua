-- wrk script for the gateway benchmark: POSTs one JSON body and prints a JSON summary line.
-- bench/run.py sets BENCH_BODY_FILE (path of the body) and, optionally, BENCH_AUTHORIZATION
-- (the whole Authorization header value).

local body_path = os.getenv("BENCH_BODY_FILE")
if body_path == nil then
  error("BENCH_BODY_FILE is not set: it must name the file with the POST body")
end
local body_file = assert(io.open(body_path, "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

-- Called once after the run. errors.status counts responses with a status above 399.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
