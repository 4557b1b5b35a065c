#!/usr/bin/env bash
# The fleet view at scale (issue 22 item 5): for each fleet size in SIZES, a fresh bty-web on
# 127.0.0.1 (its own state dir and port) is seeded with that many machines (PXE discoveries of
# new MACs over one keep-alive connection), then measured:
#   1. GET /ui/machines (the first page): bytes, and the median of RUNS curl time_total
#   2. the whole feed's snapshot (GET /events/machines, its first machines-update): bytes
#   3. a discovery storm of STORM new MACs (GET /pxe/{mac}) while two curl -N subscribers
#      record their streams: one on the delta feed (?since= the page's data-version), one on
#      the whole feed. Bytes per change = the bytes each received after its first event,
#      divided by the STORM rows that changed.
# then prints a table, and under `make bench-fleet-view`/`make bench-web` (or WRITE=1)
# replaces the section between the bench-fleet-view markers of bench/RESULTS.md (appended when
# absent; the rest of the file is kept).
#
# Network traffic goes to 127.0.0.1 only.
#
# Env: SIZES="1000 10000"  STORM=1000  RUNS=7
#      BTY_WEB=<repo>/target/release/bty-web (make passes the static musl build)
#      WORK=/tmp/bench-fleet-view.XXXX (logs and the recorded streams; kept)
#      RESULTS=<repo>/bench/RESULTS.md  WRITE=1|0 (default: 1 under make, else 0)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_ENV=""
for v in SIZES STORM RUNS BTY_WEB; do
  [[ -n ${!v+x} ]] && CALLER_ENV+="$v=$(printf %q "${!v}") "
done
BTY_WEB=${BTY_WEB:-$REPO/target/release/bty-web}
RESULTS=${RESULTS:-$REPO/bench/RESULTS.md}
SIZES=${SIZES:-1000 10000}
STORM=${STORM:-1000}
RUNS=${RUNS:-7}
WRITE=${WRITE:-$([[ -n ${MAKELEVEL:-} ]] && echo 1 || echo 0)}
PASSWORD=bench-fleet-view-password
WORK=${WORK:-$(mktemp -d /tmp/bench-fleet-view.XXXXXX)}
HELPER=$WORK/helper.py
TABLE=$WORK/table.md

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# The server may not pick up settings from the caller's environment or /etc/bty.
for v in ${!BTY_@}; do [[ $v == BTY_WEB ]] || unset "$v"; done

# ---- what we started, stopped on exit whatever happens ----
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in curl python3 git; do command -v $t >/dev/null || die "$t is missing (make deps)"; done
[[ -x $BTY_WEB ]] || die "$BTY_WEB not found: cargo build --release (or make bench-fleet-view)"
mkdir -p "$WORK"
log "work dir $WORK"

cat > "$HELPER" <<'PYEOF'
import http.client, re, socket, sys

def freeport():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()

def discover(port, first, n):
    """GET /pxe/{mac} for n new MACs 52:54:PP:QQ:RR:SS counting from `first`, over one
    keep-alive connection; every answer must be 200."""
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
    for i in range(int(first), int(first) + int(n)):
        mac = "52:54:%02x:%02x:%02x:%02x" % ((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)
        c.request("GET", "/pxe/" + mac)
        r = c.getresponse(); r.read()
        if r.status != 200:
            sys.exit(f"GET /pxe/{mac}: {r.status}")

def version(page):
    m = re.search(rb'data-version="(\d+)"', open(page, "rb").read())
    if not m:
        sys.exit(f"no data-version in {page}")
    print(m.group(1).decode())

def after_first(stream):
    """Bytes of a recorded event stream after its first event, and the events in them."""
    data = open(stream, "rb").read()
    end = data.find(b"\n\n")
    if end < 0:
        sys.exit(f"no event in {stream}")
    rest = data[end + 2:]
    print(len(rest), len(re.findall(rb"^event: machines-", rest, re.M)))

def first_event(stream):
    data = open(stream, "rb").read()
    end = data.find(b"\n\n")
    print(end + 2 if end >= 0 else 0)

def median(*xs):
    xs = sorted(float(x) for x in xs)
    print("%.1f" % (xs[len(xs) // 2] * 1000))

globals()[sys.argv[1]](*sys.argv[2:])
PYEOF
py() { python3 "$HELPER" "$@"; }

wait_up() { # PORT PID
  local i
  for ((i = 0; i < 300; i++)); do
    curl -s -m 1 -o /dev/null "http://127.0.0.1:$1/healthz" && return 0
    kill -0 "$2" 2>/dev/null || die "bty-web exited at start (see $WORK)"
    sleep 0.1
  done
  die "bty-web did not answer within 30 s"
}

printf '| machines | /ui/machines first page | its time (median of %s) | whole snapshot | storm: delta feed | per row changed | storm: whole feed | per row changed |\n' "$RUNS" > "$TABLE"
printf '|---|---|---|---|---|---|---|---|\n' >> "$TABLE"

for n in $SIZES; do
  state=$WORK/state-$n
  rm -rf "$state" && mkdir -p "$state"
  : > "$state/bty.toml"
  port=$(py freeport)
  log "$n machines: bty-web on 127.0.0.1:$port"
  BTY_CONFIG_FILE=$state/bty.toml BTY_ADMIN_PASSWORD=$PASSWORD BTY_PXE_DISCOVERIES_PER_MINUTE=0 \
    BTY_PXE_MAX_DISCOVERED=0 "$BTY_WEB" --listen "127.0.0.1:$port" --state-dir "$state" \
    > "$WORK/server-$n.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_up "$port" "$pid"
  base=http://127.0.0.1:$port
  cookie=$(curl -s -m 30 -o /dev/null -D - -d "password=$PASSWORD" "$base/ui/login" \
    | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(bty-token=[^;]*\).*/\1/p')
  [[ $cookie == bty-token=?* ]] || die "POST /ui/login gave no session cookie"

  log "seeding $n machines"
  py discover "$port" 0 "$n"
  # Past the publisher's tick, so that the page's version covers the seeding.
  sleep 1

  times=()
  for ((r = 0; r < RUNS; r++)); do
    out=$(curl -s -m 30 -b "$cookie" -o "$WORK/page-$n.html" -w '%{size_download} %{time_total}' "$base/ui/machines")
    page_bytes=${out% *}
    times+=("${out#* }")
  done
  page_ms=$(py median "${times[@]}")
  since=$(py version "$WORK/page-$n.html")

  curl -s -N -m 2 -b "$cookie" "$base/events/machines" > "$WORK/snapshot-$n.txt" || true
  snapshot_bytes=$(py first_event "$WORK/snapshot-$n.txt")

  log "storm of $STORM new machines with a delta and a whole subscriber"
  curl -s -N -b "$cookie" "$base/events/machines?since=$since" > "$WORK/delta-$n.txt" &
  delta_pid=$!
  curl -s -N -b "$cookie" "$base/events/machines" > "$WORK/whole-$n.txt" &
  whole_pid=$!
  PIDS+=("$delta_pid" "$whole_pid")
  sleep 1
  py discover "$port" $((1 << 24)) "$STORM"
  # The last tick's events, then the subscribers go.
  sleep 2
  kill -TERM "$delta_pid" "$whole_pid" 2>/dev/null || true
  wait "$delta_pid" "$whole_pid" 2>/dev/null || true
  read -r delta_bytes delta_events < <(py after_first "$WORK/delta-$n.txt")
  read -r whole_bytes whole_events < <(py after_first "$WORK/whole-$n.txt")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true

  per() { awk -v b="$1" -v n="$STORM" 'BEGIN{printf "%.0f B", b / n}'; }
  printf '| %s | %s B | %s ms | %s B | %s B in %s events | %s | %s B in %s events | %s |\n' \
    "$n" "$page_bytes" "$page_ms" "$snapshot_bytes" "$delta_bytes" "$delta_events" \
    "$(per "$delta_bytes")" "$whole_bytes" "$whole_events" "$(per "$whole_bytes")" >> "$TABLE"
done

echo
cat "$TABLE"
echo "targets: stream bytes per change follow the rows changed, not the fleet (delta per row the" \
  "same at every size); /ui/machines first page under 100 KB and 20 ms at 10,000 machines"

if [[ $WRITE == 1 ]]; then
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [[ -n ${MAKELEVEL:-} ]]; then command="${CALLER_ENV}make bench-fleet-view"; else command="${CALLER_ENV}bench/fleet-view.sh"; fi
  section=$WORK/section.md
  {
    echo "<!-- bench-fleet-view:start (written by bench/fleet-view.sh; replaced on each \`make bench-fleet-view\`) -->"
    echo "# The fleet view at scale"
    echo
    echo "Generated by \`$command\` (bench/fleet-view.sh) on $(date -u +%FT%TZ), bty-web at commit $commit;"
    echo "a storm of $STORM discoveries of new machines (one GET /pxe/{mac} each) while one delta and one whole subscriber record their streams."
    echo
    cat "$TABLE"
    echo "<!-- bench-fleet-view:end -->"
  } > "$section"
  python3 - "$RESULTS" "$section" <<'PYEOF'
import re, sys
path, section = sys.argv[1], open(sys.argv[2]).read()
try:
    old = open(path).read()
except FileNotFoundError:
    old = ""
pat = re.compile(r"<!-- bench-fleet-view:start.*?<!-- bench-fleet-view:end -->\n?", re.S)
if pat.search(old):
    new = pat.sub(lambda _: section, old, count=1)
else:
    new = old + ("" if old.endswith("\n") or not old else "\n") + "\n" + section
open(path, "w").write(new)
PYEOF
  log "wrote the section of $RESULTS"
fi
