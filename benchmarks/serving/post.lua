-- wrk script: POST real PNG requests, rotating through a manifest, and print the summary as one JSON line.
--   wrk -t1 -c64 -d12s --latency -s post.lua http://127.0.0.1:8000 -- manifest.tsv
-- manifest.tsv: one request a line, "<body file>\t<path>\t<Header: value>\t<Header: value>...".
-- Every request is built once at start-up (wrk.format), so the generator only copies bytes while measuring.

local counter = 1
local threads = {}

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local function split(line, sep)
  local out = {}
  for field in string.gmatch(line, "([^" .. sep .. "]+)") do
    table.insert(out, field)
  end
  return out
end

function init(args)
  local manifest = args[1]
  requests = {}
  for line in io.lines(manifest) do
    local fields = split(line, "\t")
    local f = assert(io.open(fields[1], "rb"))
    local body = f:read("*a")
    f:close()
    local headers = {}
    for i = 3, #fields do
      local name, value = string.match(fields[i], "^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    table.insert(requests, wrk.format("POST", fields[2], headers, body))
  end
  -- threads start at different images
  index = ((id or 1) * 97) % #requests
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
