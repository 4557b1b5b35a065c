-- GET /pxe/{mac} cycling over the N machines bench/web.sh seeded:
--   wrk -tT ... -s bench/wrk/pxe.lua http://HOST:PORT -- N T
-- MAC i (0 <= i < N) is 52:54:00:00:HH:LL with HH:LL = i as 16 bits, as web.sh seeds them.
-- wrk thread k of T starts at MAC k*N/T and takes the next MAC for each request, so the
-- threads together sweep every machine.
-- With a third argument "new", every request is for a MAC never seen before (52:54:01:XX:XX:XX,
-- thread k counting from k * 2^20): each one a discovery, the PXE path's write.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local next_id = 0
function setup(thread)     -- runs in the main Lua state, once per wrk thread
  thread:set("id", next_id)
  next_id = next_id + 1
end

local n, i, fresh
function init(args)        -- runs in each thread's own Lua state; `id` was set by setup
  n = tonumber(args[1]) or 1000
  local t = tonumber(args[2]) or 1
  fresh = args[3] == "new"
  if fresh then
    i = (id or 0) * 1048576
  else
    i = math.floor((id or 0) * n / t) % n
  end
end

function request()
  local path
  if fresh then
    path = string.format("/pxe/52:54:01:%02x:%02x:%02x",
      math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
    i = i + 1
  else
    path = string.format("/pxe/52:54:00:00:%02x:%02x", math.floor(i / 256), i % 256)
    i = (i + 1) % n
  end
  return wrk.format("GET", path)
end
