#!/usr/bin/env bash
# bty-web data-plane benchmark: one large file out of bty-web (sendfile(2) from the page cache)
# and out of nginx (Debian's nginx-light: `sendfile on; tcp_nopush on;`), side by side in one run
# on 127.0.0.1, the same bytes from the same page cache:
#   1. a file of SIZE random bytes in a boot dir; bty-web serves it as /boot/big.img and, from
#      its image cache (`bty-web cache add`, then a catalog entry pinned to its sha256), as
#      /images/{sha256}/big.img; nginx serves a hard link to it (the same inode, so the same
#      cached pages) as /big.img
#   2. the page cache is warmed: the file read once, then one GET of each URL
#   3. for each of CLIENTS concurrent clients, wrk on each URL for DURATION s, one at a time:
#      aggregate throughput (every byte wrk read / the run's seconds), the server's CPU seconds
#      per GB sent (utime + stime from /proc/PID/stat; nginx: master and workers) and its peak
#      RSS (VmHWM; nginx: master and workers added up)
#   4. a PXE storm during a flash storm: wrk on GET /pxe/{mac} cycling over MACHINES MACs
#      (bench/wrk/pxe.lua; a first 2 s run discovers them, so the measured runs take the path of
#      known machines), alone and then while FLASH_CLIENTS clients download /boot/big.img. nginx
#      has no /pxe: this compares bty-web with itself
# then prints the tables, with ratios bty-web / nginx, and under `make bench-dataplane` (or
# WRITE=1) replaces the section between the bench-dataplane markers of bench/RESULTS.md
# (appended when absent; the rest of the file is kept, and bench/flash.sh keeps this section).
#
# Builds and installs nothing: `make bench-dataplane` builds the static bty-web and installs
# nginx-light with its system service kept off. Network traffic goes to 127.0.0.1 only.
#
# Env: SIZE=1G (bytes, K/M/G suffixes: 1024-based)  DURATION=10 (s per wrk run)  RUNS=3 (rounds
#      of the throughput runs; the tables show medians)
#      CLIENTS="1 16 64"  THREADS=2 (wrk threads, at most the connections)  MACHINES=1000
#      PXE_CONNS=16  FLASH_CLIENTS=16  DL_NICE=10 (the downloading clients' nice value in the
#      PXE storm: they stand for machines elsewhere)  PXE_SLACK=1.10 (the /pxe target: p50 and p99 during the
#      downloads at most this many times their figures alone)
#      WORK=/tmp/bench-dataplane.XXXXXX (logs, raw wrk output; kept; the big file and the cache
#      are deleted unless KEEP_FILE=1)  BTY_WEB=<repo>/target/release/bty-web (make passes the
#      static musl build)  NGINX=nginx (PATH, then /usr/sbin)
#      RESULTS=<repo>/bench/RESULTS.md  WRITE=1|0 (default: 1 under make, else 0)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_ENV=""
for v in SIZE DURATION RUNS CLIENTS THREADS MACHINES PXE_CONNS FLASH_CLIENTS DL_NICE PXE_SLACK BTY_WEB NGINX; do
  [[ -n ${!v+x} ]] && CALLER_ENV+="$v=$(printf %q "${!v}") "
done
SIZE=${SIZE:-1G}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-1 16 64}
THREADS=${THREADS:-2}
MACHINES=${MACHINES:-1000}
PXE_CONNS=${PXE_CONNS:-16}
FLASH_CLIENTS=${FLASH_CLIENTS:-16}
DL_NICE=${DL_NICE:-10}
RUNS=${RUNS:-3}
PXE_SLACK=${PXE_SLACK:-1.10}
BTY_WEB=${BTY_WEB:-$REPO/target/release/bty-web}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
RESULTS=${RESULTS:-$REPO/bench/RESULTS.md}
WRITE=${WRITE:-$([[ -n ${MAKELEVEL:-} ]] && echo 1 || echo 0)}
PASSWORD=bench-dataplane-password
WORK=${WORK:-$(mktemp -d /tmp/bench-dataplane.XXXXXX)}
KV=$WORK/results.kv
HZ=$(getconf CLK_TCK)

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# bty-web must not pick up settings from the caller's environment or /etc/bty.
for v in ${!BTY_@}; do [[ $v == BTY_WEB ]] || unset "$v"; done

# ---- servers we started, stopped on exit whatever happens ----
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
cleanup() {
  stop_all
  [[ -n ${KEEP_FILE:-} ]] || rm -rf "$WORK/boot" "$WORK/www" "$WORK/cache" "$WORK/big.img"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- prerequisites ----
for t in wrk curl python3 numfmt; do command -v $t >/dev/null || die "$t is missing (make deps)"; done
[[ -x $NGINX ]] || die "nginx not found (make bench-dataplane installs nginx-light)"
[[ -x $BTY_WEB ]] || die "$BTY_WEB not found: cargo build --release (or make bench-dataplane)"
BYTES=$(numfmt --from=iec "$SIZE") || die "SIZE=$SIZE: expected bytes with an optional K/M/G suffix"
mkdir -p "$WORK"
# nginx's workers drop root for its default user: they must be able to read the file.
chmod 755 "$WORK"
: > "$KV"
log "work dir $WORK"

# ---- the file ----
mkdir -p "$WORK/boot" "$WORK/www" "$WORK/cache" "$WORK/state" "$WORK/nginx"
log "writing $BYTES random bytes"
head -c "$BYTES" /dev/urandom > "$WORK/boot/big.img"
chmod 644 "$WORK/boot/big.img"
ln "$WORK/boot/big.img" "$WORK/www/big.img"

# ---- bty-web ----
BPORT=$(freeport)
: > "$WORK/bty.toml"
BTY_ENV=(BTY_CONFIG_FILE="$WORK/bty.toml" BTY_ADMIN_PASSWORD="$PASSWORD"
  BTY_PATHS_BOOT_DIR="$WORK/boot" BTY_CACHE_DIR="$WORK/cache"
  # Every client of the benchmark comes from 127.0.0.1; a lab's machines come from addresses
  # of their own. The discovery caps are off so that pxe.lua's MACs are all recorded.
  BTY_SERVER_MAX_CONNECTIONS_PER_IP=1024 BTY_PXE_MAX_DISCOVERED=0 BTY_PXE_DISCOVERIES_PER_MINUTE=0)
log "bty-web: adding the file to its image cache"
SHA=$(env "${BTY_ENV[@]}" "$BTY_WEB" cache add "$WORK/boot/big.img" --state-dir "$WORK/state" | awk '{print $1; exit}')
[[ $SHA =~ ^[0-9a-f]{64}$ ]] || die "bty-web cache add printed no sha256"
env "${BTY_ENV[@]}" "$BTY_WEB" --listen "127.0.0.1:$BPORT" --state-dir "$WORK/state" > "$WORK/bty-web.log" 2>&1 &
BTY_PID=$!
PIDS+=("$BTY_PID")

# ---- nginx: its own config, in the foreground, nothing of the system's ----
NPORT=$(freeport)
start_nginx "$NPORT" "$WORK/www" "tcp_nopush on; keepalive_requests 1000000;"

wait_up "http://127.0.0.1:$BPORT/healthz" bty-web "$BTY_PID"
wait_up "http://127.0.0.1:$NPORT/big.img" nginx "$NGINX_PID"

import_pinned "$BPORT" "$NPORT" "$WORK/www" big.img "$SHA" img "$BYTES"

URLS=(boot "http://127.0.0.1:$BPORT/boot/big.img"
  images "http://127.0.0.1:$BPORT/images/$SHA/big.img"
  nginx "http://127.0.0.1:$NPORT/big.img")
log "warming the page cache"
cat "$WORK/boot/big.img" > /dev/null
for ((i = 0; i < ${#URLS[@]}; i += 2)); do get_whole "${URLS[i + 1]}" "$BYTES"; done

# ---- measuring ----

# run_wrk KEY PID CONNS [wrk args...]: one wrk run; records its WRK_RESULT line, the server's
# CPU seconds and peak RSS under KEY
run_wrk() {
  local key=$1 pid=$2 conns=$3; shift 3
  local out=$WORK/wrk-$key.txt a b line threads=$((THREADS < conns ? THREADS : conns))
  a=$(cpu_ticks "$pid")
  timeout $((DURATION + 120)) wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 60s --latency "$@" > "$out" 2>&1 \
    || { cat "$out" >&2; die "wrk $key failed"; }
  b=$(cpu_ticks "$pid")
  line=$(sed -n 's/^WRK_RESULT //p' "$out")
  [[ -n $line ]] || { cat "$out" >&2; die "wrk $key printed no WRK_RESULT line"; }
  put "wrk.$key" "$line"
  put "cpu.$key" "$(awk -v t=$((b - a)) -v hz="$HZ" 'BEGIN{printf "%.2f", t / hz}')"
  put "hwm.$key" "$(hwm_kb "$pid")"
  log "  $key: $line"
  running "$pid" || die "the server of $key died; see $WORK"
}

rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -1)
if [[ -n ${MAKELEVEL:-} ]]; then cmdline="${CALLER_ENV}make bench-dataplane"; else cmdline="${CALLER_ENV}bench/dataplane.sh"; fi
put command "$cmdline"
put date "$(date -u +%FT%TZ)"
put commit "$rev${dirty:+ (+uncommitted changes in src)}"
put machine "$(lscpu | sed -n 's/^Model name: *//p') x $(nproc), $(free -g | awk '/^Mem:/{print $2}') GiB, Linux $(uname -r)"
put wrk "$(wrk --version 2>&1 | head -1 | awk '{print "wrk", $2}')"
put nginx "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //') (Debian's $(dpkg-query -W -f '${Package} ${Version}' nginx-light 2>/dev/null || echo '?'))"
put bty "$(timeout 10 "$BTY_WEB" --version 2>&1 | head -1), $(stat -c %s "$BTY_WEB") bytes"
put bytes "$BYTES"; put runs "$RUNS"; put clients "$CLIENTS"; put duration "$DURATION"; put threads "$THREADS"
put machines "$MACHINES"; put pxe_conns "$PXE_CONNS"; put flash_clients "$FLASH_CLIENTS"; put dl_nice "$DL_NICE"; put pxe_slack "$PXE_SLACK"
b0=$(busy_ticks); sleep 2; b1=$(busy_ticks)
put background "$(awk -v t=$((b1 - b0)) -v hz="$HZ" -v n="$(nproc)" 'BEGIN{printf "%.0f", 100 * t / hz / 2 / n}')% of the machine's CPU busy in the 2 s before the runs"

# RUNS rounds; in each, every number of clients against every server, the servers' order
# rotated by one each round so that none always runs first (or right after another's load).
for ((r = 1; r <= RUNS; r++)); do
  for n in $CLIENTS; do
    log "round $r of $RUNS: $n concurrent clients, ${DURATION}s each"
    for ((j = 0; j < ${#URLS[@]} / 2; j++)); do
      i=$(( ((j + r - 1) % (${#URLS[@]} / 2)) * 2 ))
      who=${URLS[i]}
      pid=$BTY_PID
      [[ $who == nginx ]] && pid=$NGINX_PID
      run_wrk "$who.$n.$r" "$pid" "$n" -s "$REPO/bench/wrk/report.lua" "${URLS[i + 1]}"
    done
  done
done

log "PXE storm: GET /pxe/{mac} over $MACHINES MACs, alone, then during $FLASH_CLIENTS downloads"
base=http://127.0.0.1:$BPORT
timeout 60 wrk -t1 -c4 -d2s -s "$REPO/bench/wrk/pxe.lua" "$base" -- "$MACHINES" 1 > "$WORK/wrk-pxe-discovery.txt" 2>&1 \
  || die "the discovery run of /pxe failed: $(cat "$WORK/wrk-pxe-discovery.txt")"
run_wrk pxe.alone "$BTY_PID" "$PXE_CONNS" -s "$REPO/bench/wrk/pxe.lua" "$base" -- "$MACHINES" "$THREADS"
# The downloads start first and end last, so the whole /pxe run is under them. Their wrk stands
# for machines elsewhere on the network, whose CPU is not the server's: here it shares the
# server's cores, so it runs at nice DL_NICE and takes what the server and the /pxe load leave.
flash_out=$WORK/wrk-flash-storm.txt
timeout $((DURATION + 120)) nice -n "$DL_NICE" wrk -t"$THREADS" -c"$FLASH_CLIENTS" -d"$((DURATION + 4))s" --timeout 60s \
  -s "$REPO/bench/wrk/report.lua" "$base/boot/big.img" > "$flash_out" 2>&1 &
flash_pid=$!
sleep 2
run_wrk pxe.storm "$BTY_PID" "$PXE_CONNS" -s "$REPO/bench/wrk/pxe.lua" "$base" -- "$MACHINES" "$THREADS"
wait "$flash_pid" || { cat "$flash_out" >&2; die "the download storm's wrk failed"; }
put wrk.flash "$(sed -n 's/^WRK_RESULT //p' "$flash_out")"
put bty.log "$(grep -c ' 5[0-9][0-9] ' "$WORK/bty-web.log" || true) answers 5xx in bty-web's access log"

# ---- report ----
TABLE=$(python3 - "$KV" <<'PYEOF'
import sys
kv = {}
for line in open(sys.argv[1]):
    k, _, v = line.rstrip("\n").partition("=")
    kv[k] = v
def num(x):
    try: return float(x)
    except (TypeError, ValueError): return float("nan")
def wrk(key): return dict(x.split("=") for x in kv.get(f"wrk.{key}", "").split())
def f(x, d=2): return "–" if x != x else f"{x:,.{d}f}"
# A throughput key (server.clients) has one run per round, key.1 .. key.RUNS; others have one.
def keys(key): return [key] if f"wrk.{key}" in kv else [k[4:] for k in kv if k.startswith(f"wrk.{key}.")]
def rate(k):
    w = wrk(k)
    return num(w.get("bytes")) / num(w.get("duration_us")) * 1e6 / 1e9 if w else float("nan")
def rates(key): return sorted(rate(k) for k in keys(key))
def gbps(key):
    r = rates(key)
    return r[len(r) // 2] if r else float("nan")
def spread(key):
    r = rates(key)
    return f"{f(r[0])}–{f(r[-1])}" if len(r) > 1 else ""
def cpu_per_gb(key):
    ks = keys(key)
    sent = sum(num(wrk(k).get("bytes")) for k in ks)
    return sum(num(kv.get(f"cpu.{k}")) for k in ks) / (sent / 1e9) if ks and sent else float("nan")
def mib(key): return max((num(kv.get(f"hwm.{k}")) for k in keys(key)), default=float("nan")) / 1024
def total(key, field): return sum(int(num(wrk(k).get(field, 0))) for k in keys(key))
def ratio(b, n): return "–" if b != b or n != n or n == 0 else f"{b / n:.2f}x"
clients = kv["clients"].split()
o = []
o.append("Aggregate throughput (GB/s = 10^9 bytes/s, every byte the clients read / the run's "
         f"seconds; the median of {kv['runs']} runs, their range below it) and the ratio of the "
         "medians to nginx's (≥ 1: bty-web as fast or faster):")
o.append("")
o.append("| clients | nginx | bty-web /boot/{name} | ratio | bty-web /images/{sha256}/{name} | ratio |")
o.append("|---|---|---|---|---|---|")
for n in clients:
    ng, bo, im = gbps(f"nginx.{n}"), gbps(f"boot.{n}"), gbps(f"images.{n}")
    o.append(f"| {n} | {f(ng)} | {f(bo)} | {ratio(bo, ng)} | {f(im)} | {ratio(im, ng)} |")
    if int(kv["runs"]) > 1:
        o.append(f"| | {spread(f'nginx.{n}')} | {spread(f'boot.{n}')} | | {spread(f'images.{n}')} | |")
o.append("")
o.append("What each run cost the server: CPU seconds (user + system, all its processes) per GB "
         "sent (lower is better), peak RSS so far (VmHWM, MiB; nginx: master and workers "
         "added up), requests completed within its runs, and wrk's errors, added up over the runs "
         "(connect/read/write/timeout, non-2xx):")
o.append("")
o.append("| clients | server | CPU s per GB | peak RSS, MiB | requests | errors |")
o.append("|---|---|---|---|---|---|")
for n in clients:
    for key, label in (("nginx", "nginx"), ("boot", "bty-web /boot"), ("images", "bty-web /images")):
        k = f"{key}.{n}"
        if not keys(k): continue
        err = "/".join(str(total(k, x)) for x in ("connect", "read", "write", "timeout")) + f", {total(k, 'status')}"
        o.append(f"| {n} | {label} | {f(cpu_per_gb(k), 3)} | {f(mib(k), 1)} | {total(k, 'requests')} | {err} |")
o.append("")
pa, ps, fl = wrk("pxe.alone"), wrk("pxe.storm"), wrk("flash")
def ms(w, p): return num(w.get(f"{p}_us")) / 1000 if w else float("nan")
o.append(f"A PXE storm during a flash storm: GET /pxe/{{mac}} over {kv['machines']} known MACs "
         f"(wrk -c{kv['pxe_conns']}), alone and while {kv['flash_clients']} clients download "
         f"/boot/big.img (they ran at {f(gbps('flash'))} GB/s over their whole run). Latency in "
         f"ms; ratio = during / alone (≤ 1: no worse):")
o.append("")
o.append("| /pxe/{mac} | requests/s | p50 | p90 | p99 | max | errors |")
o.append("|---|---|---|---|---|---|---|")
for label, w in (("alone", pa), (f"during {kv['flash_clients']} downloads", ps)):
    if not w: continue
    err = f"{w['connect']}/{w['read']}/{w['write']}/{w['timeout']}, {w['status']}"
    o.append(f"| {label} | {f(num(w['rps']), 0)} | {f(ms(w, 'p50'))} | {f(ms(w, 'p90'))} | "
             f"{f(ms(w, 'p99'))} | {f(ms(w, 'max'))} | {err} |")
o.append(f"| ratio | {ratio(num(ps.get('rps')), num(pa.get('rps')))} | "
         f"{ratio(ms(ps, 'p50'), ms(pa, 'p50'))} | {ratio(ms(ps, 'p90'), ms(pa, 'p90'))} | "
         f"{ratio(ms(ps, 'p99'), ms(pa, 'p99'))} | {ratio(ms(ps, 'max'), ms(pa, 'max'))} | |")
o.append("")
def met(ok): return "**met**" if ok else "**missed**"
t = []
for n in clients:
    for key in ("boot", "images"):
        b, ng = gbps(f"{key}.{n}"), gbps(f"nginx.{n}")
        t.append((f"/{key} throughput ≥ 0.9x nginx's with {n} client{'s' if n != '1' else ''}",
                  met(b == b and ng == ng and b >= 0.9 * ng), ratio(b, ng)))
slack = num(kv["pxe_slack"])
p50r, p99r = ms(ps, "p50") / ms(pa, "p50"), ms(ps, "p99") / ms(pa, "p99")
t.append((f"/pxe/{{mac}} latency no worse during the downloads (p50 and p99 ≤ {kv['pxe_slack']}x alone)",
          met(p50r <= slack and p99r <= slack), f"p50 {f(p50r)}x, p99 {f(p99r)}x"))
first, last = clients[0], clients[-1]
bty_first = mib(f"boot.{first}")
bty_last = max(mib(f"boot.{last}"), mib(f"images.{last}"))
t.append((f"bty-web RSS flat: peak after {last} clients within 8 MiB of the peak after {first}",
          met(bty_last - bty_first <= 8), f"{f(bty_first, 1)} → {f(bty_last, 1)} MiB"))
o.append("| target (bty-web) | status | numbers |")
o.append("|---|---|---|")
for x in t:
    o.append(f"| {x[0]} | {x[1]} | {x[2]} |")
print("\n".join(o))
PYEOF
)
SECTION=$(cat <<EOF
<!-- bench-dataplane:start (written by bench/dataplane.sh; replaced on each \`make bench-dataplane\`) -->
# bty-web data plane: large files against nginx

Generated by \`$(kvget command)\` (bench/dataplane.sh) on $(kvget date), bty-web at commit $(kvget commit).
Raw output (wrk, server logs) was in \`$WORK\`.

- machine: $(kvget machine)
- bty: $(kvget bty), started as \`bty-web --listen 127.0.0.1:PORT --state-dir DIR\` with the file in its boot dir and its image cache, an empty BTY_CONFIG_FILE, the per-address connection cap raised to 1024 (every client is 127.0.0.1) and the PXE discovery caps off
- nginx: $(kvget nginx), in the foreground with its own config: \`worker_processes auto; sendfile on; tcp_nopush on; access_log off;\`, the file as a hard link in its root (the same inode: the same cached pages)
- load generator: $(kvget wrk)
- background: $(kvget background)
- procedure: one file of $(kvget bytes) random bytes, read once and fetched once from each URL to warm the page cache; then $(kvget runs) rounds: in each, for each number of clients ($(kvget clients)), wrk \`-t$(kvget threads) -cN -d$(kvget duration)s --timeout 60s\` (fewer threads than connections never) on nginx, bty-web /boot and bty-web /images, one at a time, their order rotated by one each round, each client fetching the file again and again; clients and servers share the machine's cores. Throughput counts every byte wrk read, so a download cut by the end of a run counts as far as it got. Then GET /pxe/{mac} ($(kvget machines) MACs cycled by bench/wrk/pxe.lua, discovered by a 2 s run first) for $(kvget duration) s alone, and again while wrk downloads /boot/big.img over $(kvget flash_clients) connections (started 2 s before the /pxe run, ending 2 s after; that wrk runs under \`nice -n $(kvget dl_nice)\`, standing for machines elsewhere whose CPU is not the server's). bty-web runs a connection's thread at nice 10 once it sends a body of 1 MiB or more, so the control plane goes first when the cores are busy.
- bty-web's access log: $(kvget bty.log)

$TABLE
<!-- bench-dataplane:end -->
EOF
)
echo
echo "$SECTION" | tee "$WORK/section.md"

if [[ $WRITE == 1 ]]; then
  write_section "$RESULTS" "$WORK/section.md" "<!-- bench-dataplane:start" "<!-- bench-dataplane:end -->" data-plane
fi
