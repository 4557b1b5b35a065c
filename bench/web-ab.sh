#!/usr/bin/env bash
# bty-web against an earlier bty-web, side by side in one run: what a change costs the PXE path.
#
#   bench/web-ab.sh OLD_BTY_WEB NEW_BTY_WEB
#
# Each binary in turn, ROUNDS times, interleaved so both see the same machine: start on
# 127.0.0.1 with a fresh state dir, seed MACHINES machines (PUT /machines/{mac}), then wrk
# DURATION s each on GET /pxe/{mac} over the seeded MACs, GET /pxe/{mac} with a new MAC every
# request (each a discovery: the write path) and GET /healthz. The discovery caps are off for
# both (an older binary ignores the settings), so the write path measures writes, not refusals.
# Prints one line per run and the mean ratio new/old per route.
# Env: MACHINES=1000 DURATION=10 ROUNDS=2 CONNS=16 THREADS=2
set -euo pipefail
OLD=${1:?usage: bench/web-ab.sh OLD_BTY_WEB NEW_BTY_WEB}
NEW=${2:?usage: bench/web-ab.sh OLD_BTY_WEB NEW_BTY_WEB}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LUA=$REPO/bench/wrk/pxe.lua
MACHINES=${MACHINES:-1000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-16}
THREADS=${THREADS:-2}
WORK=$(mktemp -d /tmp/bench-web-ab.XXXXXX)
PID=
trap '[[ -n $PID ]] && kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# rps WRK_OUTPUT: the requests/s of the WRK_RESULT line bench/wrk/report.lua prints
rps() { tr ' ' '\n' <<<"$1" | sed -n 's/^rps=//p'; }

run() { # WHO BINARY
  local who=$1 bin=$2 port d url
  port=$(free_port); d=$WORK/$who; rm -rf "$d"; mkdir -p "$d"
  env -i PATH="$PATH" BTY_ADMIN_PASSWORD=pw-for-bench BTY_PXE_MAX_DISCOVERED=0 \
    BTY_PXE_DISCOVERIES_PER_MINUTE=0 "$bin" --listen 127.0.0.1:"$port" --state-dir "$d/state" \
    >"$d/log" 2>&1 &
  PID=$!
  url=http://127.0.0.1:$port
  for _ in $(seq 50); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf -c "$d/jar" -d password=pw-for-bench "$url/ui/login" -o /dev/null
  for ((i = 0; i < MACHINES; i++)); do
    printf '%s/machines/52:54:00:00:%02x:%02x\n' "$url" $((i / 256)) $((i % 256))
  done | xargs -P4 -n50 curl -sf -b "$d/jar" -X PUT -H 'Content-Type: application/json' -d '{}' >/dev/null
  local pxe pxenew health
  pxe=$(rps "$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$url" -- "$MACHINES" "$THREADS" | grep WRK_RESULT)")
  pxenew=$(rps "$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$url" -- "$MACHINES" "$THREADS" new | grep WRK_RESULT)")
  health=$(rps "$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$REPO/bench/wrk/report.lua" "$url/healthz" | grep WRK_RESULT)")
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  echo "$who pxe=$pxe pxenew=$pxenew healthz=$health" | tee -a "$WORK/runs"
}

for ((r = 1; r <= ROUNDS; r++)); do run old "$OLD"; run new "$NEW"; done
python3 - "$WORK/runs" <<'EOF'
import sys
runs = {}
for line in open(sys.argv[1]):
    who, *kv = line.split()
    for k, v in (p.split("=") for p in kv):
        runs.setdefault((who, k), []).append(float(v))
print("| route | old req/s (mean) | new req/s (mean) | new/old |")
print("|---|---|---|---|")
for k in ("pxe", "pxenew", "healthz"):
    o = sum(runs[("old", k)]) / len(runs[("old", k)])
    n = sum(runs[("new", k)]) / len(runs[("new", k)])
    print(f"| {k} | {o:,.0f} | {n:,.0f} | {n / o:.2f}x |")
EOF
