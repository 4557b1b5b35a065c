#!/usr/bin/env bash
# A fleet flashed at once from one server: COUNT `bty flash` runs pulling
# http://127.0.0.1/images/SHA/NAME from one bty-web's image cache, then COUNT
# `curl -s URL | zstd -dc | dd of=T bs=4M oflag=direct` pipelines pulling the same .zst file
# from nginx (Debian's nginx-light, `sendfile on`), each machine a loop device of its own over
# a sparse file. Reports the aggregate MB/s written, the slowest and fastest machine, the
# clients' CPU, and the server's CPU (utime + stime from /proc/PID/stat; nginx: master and
# workers) and peak RSS (VmHWM; nginx: master and workers added up), with ratios; every target
# is checked against the image's sha256.
#
# Network traffic goes to 127.0.0.1 only. Writes under WORK (a new /tmp/bench-fleet.XXXXXX),
# to the loop devices it attaches (detached on exit, whatever happens), and, with WRITE=1 (the
# default under make), to its section of bench/RESULTS.md. Needs root (losetup).
#
# Env: COUNT=16  SIZE=256M (the raw image; the .zst is smaller)
#      BTY=<repo>/target/release/bty  BTY_WEB=<repo>/target/release/bty-web
#      NGINX=nginx (PATH, then /usr/sbin)  WORK  WRITE  RESULTS=<repo>/bench/RESULTS.md
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COUNT=${COUNT:-16}
SIZE=${SIZE:-256M}
BTY=${BTY:-$REPO/target/release/bty}
BTY_WEB=${BTY_WEB:-$REPO/target/release/bty-web}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
RESULTS=${RESULTS:-$REPO/bench/RESULTS.md}
WRITE=${WRITE:-$([[ -n ${MAKELEVEL:-} ]] && echo 1 || echo 0)}
PASSWORD=bench-fleet-password
WORK=${WORK:-$(mktemp -d /tmp/bench-fleet.XXXXXX)}
KV=$WORK/results.kv
HZ=$(getconf CLK_TCK)
NAME=disk.img.zst

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# bty-web and bty must not pick up settings from the caller's environment or /etc/bty.
for v in ${!BTY_@}; do [[ $v == BTY_WEB ]] || unset "$v"; done

# ---- what we started, undone on exit whatever happens ----
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
LOOPS=()
detach_loops() {
  local l
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || log "detaching $l failed"; done
  LOOPS=()
  rm -f "$WORK"/machine-*.raw
}
cleanup() {
  stop_all
  detach_loops
  rm -rf "$WORK/www" "$WORK/cache" "$WORK/disk.img" "$WORK/$NAME"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- prerequisites ----
[[ $(id -u) == 0 ]] || die "needs root (losetup)"
for t in curl zstd python3 numfmt losetup openssl; do command -v $t >/dev/null || die "$t is missing (make deps)"; done
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (make deps)"
[[ -x $NGINX ]] || die "nginx not found (bench/nginx-deps.sh installs nginx-light)"
[[ -x $BTY ]] || die "$BTY not found: cargo build --release (or make bench-fleet)"
[[ -x $BTY_WEB ]] || die "$BTY_WEB not found: cargo build --release (or make bench-fleet)"
[[ $COUNT =~ ^[1-9][0-9]*$ ]] || die "COUNT=$COUNT: expected a number of machines"
RAW=$(numfmt --from=iec "$SIZE") || die "SIZE=$SIZE: expected bytes with an optional K/M/G suffix"
(( RAW % 4194304 == 0 )) || die "SIZE=$SIZE: expected a multiple of 4 MiB (dd bs=4M oflag=direct)"
mkdir -p "$WORK"
# nginx's workers drop root for its default user: they must be able to read the file.
chmod 755 "$WORK"
: > "$KV"
log "work dir $WORK"
sha() { openssl dgst -sha256 -r "$@" | cut -d' ' -f1; }

# ---- the image: compressible like an OS image (zeros, repeated text, some noise) ----
log "making a $SIZE test image"
python3 - "$WORK/disk.img" "$RAW" <<'PYEOF'
import random, sys
path, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(22)
text = b"".join(b"/usr/lib/x86_64-linux-gnu/libexample.so.%d %08x\n" % (i, i * 2654435761 % 2**32) for i in range(4096))
with open(path, "wb") as f:
    for mib in range(size >> 20):
        kind = mib % 8
        if kind in (0, 1):
            chunk = bytes(1 << 20)                           # unused blocks
        elif kind == 2:
            chunk = rng.randbytes(1 << 20)                   # compressed data, incompressible
        else:
            off = rng.randrange(len(text) - (1 << 20)) if len(text) > (1 << 20) else 0
            chunk = (text * (((1 << 20) // len(text)) + 2))[off:off + (1 << 20)]
        f.write(chunk)
PYEOF
zstd -q -T0 -3 "$WORK/disk.img" -o "$WORK/$NAME"
ZBYTES=$(stat -c %s "$WORK/$NAME")
RAW_SHA=$(sha "$WORK/disk.img")
rm -f "$WORK/disk.img"
mkdir -p "$WORK/www" "$WORK/cache" "$WORK/state" "$WORK/nginx"
ln "$WORK/$NAME" "$WORK/www/$NAME"
chmod 644 "$WORK/$NAME"
put size "$RAW"
put zbytes "$ZBYTES"

# ---- bty-web, its cache pre-seeded with the image ----
BPORT=$(freeport)
: > "$WORK/bty.toml"
BTY_ENV=(BTY_CONFIG_FILE="$WORK/bty.toml" BTY_ADMIN_PASSWORD="$PASSWORD" BTY_CACHE_DIR="$WORK/cache"
  # Every machine of the benchmark comes from 127.0.0.1; a lab's come from addresses of their own.
  BTY_SERVER_MAX_CONNECTIONS_PER_IP=1024)
SHA=$(env "${BTY_ENV[@]}" "$BTY_WEB" cache add "$WORK/$NAME" --state-dir "$WORK/state" | awk '{print $1; exit}')
[[ $SHA =~ ^[0-9a-f]{64}$ ]] || die "bty-web cache add printed no sha256"
env "${BTY_ENV[@]}" "$BTY_WEB" --listen "127.0.0.1:$BPORT" --state-dir "$WORK/state" > "$WORK/bty-web.log" 2>&1 &
BTY_PID=$!
PIDS+=("$BTY_PID")

# ---- nginx: its own config, in the foreground, nothing of the system's ----
NPORT=$(freeport)
start_nginx "$NPORT" "$WORK/www"

wait_up "http://127.0.0.1:$BPORT/healthz" bty-web "$BTY_PID"
wait_up "http://127.0.0.1:$NPORT/$NAME" nginx "$NGINX_PID"

import_pinned "$BPORT" "$NPORT" "$WORK/www" "$NAME" "$SHA" img.zst "$ZBYTES"

BURL="http://127.0.0.1:$BPORT/images/$SHA/$NAME"
NURL="http://127.0.0.1:$NPORT/$NAME"
# One whole GET each first: the page cache holds the file for both, and bty-web has hashed its
# cached copy (it checks a file once after a start) before the clock runs.
for u in "$BURL" "$NURL"; do get_whole "$u" "$ZBYTES"; done

# ---- measuring ----

attach_loops() { # COUNT fresh, sparse machines: nothing of an earlier phase can pass the check
  local i f
  for ((i = 0; i < COUNT; i++)); do
    f=$WORK/machine-$i.raw
    truncate -s "$RAW" "$f"
    LOOPS+=("$(losetup --direct-io=on --show -f "$f")")
  done
}

# phase KEY SERVER_PID COMMAND...: COUNT machines at once; {T} in COMMAND is the machine's
# loop device. Records each machine's wall, the clients' CPU and the server's CPU and RSS.
phase() {
  local key=$1 pid=$2; shift 2
  local cmd="$*" i a b t0 t1 jobs=() failed=0 c
  attach_loops
  sync
  a=$(cpu_ticks "$pid")
  t0=$(date +%s.%N)
  for ((i = 0; i < COUNT; i++)); do
    c=${cmd//\{T\}/${LOOPS[i]}}
    /usr/bin/time -f '%e %U %S' -o "$WORK/$key.$i.time" bash -c "set -o pipefail; $c" \
      > /dev/null 2> "$WORK/$key.$i.stderr" &
    jobs+=($!)
  done
  for ((i = 0; i < COUNT; i++)); do
    wait "${jobs[i]}" || { failed=$((failed + 1)); log "$key machine $i failed: $(tail -3 "$WORK/$key.$i.stderr")"; }
  done
  t1=$(date +%s.%N)
  b=$(cpu_ticks "$pid")
  sync
  (( failed == 0 )) || die "$failed of $COUNT $key machines failed; see $WORK"
  put "$key.wall" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')"
  put "$key.cpu" "$(awk -v t=$((b - a)) -v hz="$HZ" 'BEGIN{printf "%.2f", t / hz}')"
  put "$key.hwm_kb" "$(hwm_kb "$pid")"
  put "$key.machines" "$(for ((i = 0; i < COUNT; i++)); do tail -1 "$WORK/$key.$i.time"; done | awk '{print $1}' | paste -sd' ')"
  put "$key.client_cpu" "$(for ((i = 0; i < COUNT; i++)); do tail -1 "$WORK/$key.$i.time"; done | awk '{s += $2 + $3} END {printf "%.2f", s}')"
  local bad=0 got
  for ((i = 0; i < COUNT; i++)); do
    got=$(head -c "$RAW" "${LOOPS[i]}" | sha)
    [[ $got == "$RAW_SHA" ]] || { bad=$((bad + 1)); log "$key machine $i (${LOOPS[i]}): sha256 $got, expected $RAW_SHA"; }
  done
  put "$key.verified" "$((COUNT - bad))/$COUNT"
  detach_loops
  (( bad == 0 )) || die "$bad of $COUNT $key targets differ from the image"
}

log "$COUNT x bty flash from bty-web's cache ($BURL)"
phase bty "$BTY_PID" "$BTY flash --yes --progress none $BURL {T}"
log "$COUNT x curl | zstd -dc | dd from nginx ($NURL)"
phase curl "$NGINX_PID" "curl -s $NURL | zstd -dc | dd of={T} bs=4M oflag=direct iflag=fullblock conv=fsync status=none"

put count "$COUNT"
put rev "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
put nginx "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
put cpus "$(nproc)"
# The command that produced this run, as recorded with the figures.
put invoked "SIZE=$SIZE COUNT=$COUNT $([[ -n ${MAKELEVEL:-} ]] && echo make bench-fleet || echo bench/fleet.sh)"
python3 - "$KV" "$WORK/section.md" <<'PYEOF'
import sys
kv_path, section = sys.argv[1:3]
kv = dict(l.rstrip("\n").split("=", 1) for l in open(kv_path) if "=" in l)
n, raw, z = int(kv["count"]), int(kv["size"]), int(kv["zbytes"])
def row(key):
    m = [float(x) for x in kv[f"{key}.machines"].split()]
    wall = float(kv[f"{key}.wall"])
    return dict(wall=wall, slow=max(m), fast=min(m), mbs=n * raw / wall / 1e6, served=n * z / wall / 1e6,
                cpu=float(kv[f"{key}.cpu"]), rss=int(kv[f"{key}.hwm_kb"]) / 1024,
                ccpu=float(kv[f"{key}.client_cpu"]), ok=kv[f"{key}.verified"])
b, c = row("bty"), row("curl")
cmd = kv["invoked"]
cpu_ratio = f"{b['cpu'] / c['cpu']:.2f}x" if c["cpu"] else "n/a (nginx used less than one clock tick)"
o = ["## A fleet flashed at once (bench/fleet.sh)", "",
     f"`{cmd}`, bty commit {kv['rev']}, {kv['cpus']} CPUs: {n} machines (loop devices over sparse "
     f"files, `--direct-io=on`) flash a {raw / 2**20:.0f} MiB image ({z} bytes as `.zst`) at once "
     f"over 127.0.0.1, from one bty-web's image cache and then from nginx {kv['nginx']} "
     f"(`sendfile on`); the file in the page cache for both. MB/s: decoded bytes written by all "
     f"machines / the wall time until the last one finished. Server CPU: utime + stime over the "
     f"phase (nginx: master and workers); RSS: peak (VmHWM; nginx: added up).", "",
     "| fleet | wall s | slowest s | fastest s | MB/s written | MB/s served | server CPU s | server peak RSS MiB | clients' CPU s | verified |",
     "|---|---|---|---|---|---|---|---|---|---|"]
for name, r in [(f"{n} x `bty flash URL T` from bty-web", b), (f"{n} x `curl -s URL \\| zstd -dc \\| dd of=T bs=4M oflag=direct` from nginx", c)]:
    o.append(f"| {name} | {r['wall']:.2f} | {r['slow']:.2f} | {r['fast']:.2f} | {r['mbs']:.0f} | "
             f"{r['served']:.0f} | {r['cpu']:.2f} | {r['rss']:.1f} | {r['ccpu']:.2f} | {r['ok']} |")
o += ["", f"curl pipeline / bty: wall **{c['wall'] / b['wall']:.2f}x**, slowest machine "
      f"**{c['slow'] / b['slow']:.2f}x**, clients' CPU {c['ccpu'] / b['ccpu']:.2f}x (>1: bty better); "
      f"server CPU bty-web / nginx {cpu_ratio}, "
      f"peak RSS bty-web / nginx {b['rss'] / c['rss']:.2f}x."]
text = "\n".join(o) + "\n"
print(text)
open(section, "w").write(f"<!-- bench-fleet:start -->\n{text}<!-- bench-fleet:end -->\n")
PYEOF
if [[ $WRITE == 1 ]]; then
  write_section "$RESULTS" "$WORK/section.md" "<!-- bench-fleet:start -->" "<!-- bench-fleet:end -->" fleet
fi
