-- wrk script: POST one image file as the raw body of /classify, print a JSON summary line at the end.
--   WRK_IMAGE=img.jpg wrk -t1 -c8 -d10s -s loadtests/wrk_classify.lua http://127.0.0.1:3000/classify
local f = assert(io.open(os.getenv("WRK_IMAGE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "image/jpeg"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "p50": %.3f, "p95": %.3f, "p99": %.3f}\n',
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
