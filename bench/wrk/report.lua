-- wrk reporter for bench/web.sh and bench/dataplane.sh: after the run, one machine-readable
-- line on stdout
--   WRK_RESULT requests=N duration_us=N rps=F p50_us=N p90_us=N p99_us=N max_us=N
--              connect=N read=N write=N status=N timeout=N bytes=N
-- status = responses that were not 2xx/3xx; timeout = requests past --timeout (not in the
-- latency figures); bytes = every byte read, heads and bodies, whole or cut by the end of the
-- run (bench/dataplane.sh's throughput). Loaded by `wrk -s bench/wrk/report.lua` or from pxe.lua.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "connect=%d read=%d write=%d status=%d timeout=%d bytes=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, summary.bytes))
end
