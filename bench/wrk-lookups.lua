-- wrk script of scripts/bench-front.sh: GET /v1/containers/{name} for names
-- drawn uniformly from nK-I, K in 1..NODES, I in 0..COUNT-1 (the synthetic
-- engines' names), and a JSON line of the run's figures when it is done.
--   wrk -t2 -c32 -d5s -s bench/wrk-lookups.lua URL -- NODES COUNT
-- With "noop" as the only argument it sends GET /v1/noop instead.
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

local nodes, count, noop

function init(args)
  noop = args[1] == "noop"
  nodes = tonumber(args[1]) or 3
  count = tonumber(args[2]) or 10000
  -- Each thread its own sequence: LuaJIT seeds every state alike.
  math.randomseed(os.time() * 1000 + id * 7919)
end

function request()
  if noop then
    return wrk.format("GET", "/v1/noop")
  end
  return wrk.format("GET", "/v1/containers/n" .. math.random(1, nodes) .. "-" .. math.random(0, count - 1))
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"throughput":%.1f,"bytes_per_answer":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.0f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes / math.max(summary.requests, 1),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
