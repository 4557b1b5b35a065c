#!/usr/bin/env bash
# Flash over http benchmark: `bty flash http://127.0.0.1/disk.img.zst` against
# `curl -s URL | zstd -dc | dd bs=4M oflag=direct conv=fsync`, side by side in one run, on one
# O_DIRECT loop device, with the deterministic 2 GiB test image of $SHARED/bench/make-image.sh
# served by `python3 -m http.server` on 127.0.0.1 (both pipelines read from the same server).
#
# Writes ONLY under $BENCH_DIR (default /tmp/bench-http: its own target, so that it never
# shares a loop device with bench/flash.sh), to the loop device it creates (detached on exit),
# to bench/HTTP.md and to its section of bench/RESULTS.md. Needs root (losetup, drop_caches).
#
# Env: RUNS=3  BENCH_DIR=/tmp/bench-http  SHARED=<repo>/../shared  BTY=<repo>/target/release/bty
#      IMG_DIR: the test images (default /tmp/bench/img when bench/flash.sh made them there,
#      else $BENCH_DIR/img, made by make-image.sh)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-http}
BTY=${BTY:-$REPO/target/release/bty}
RUNS=${RUNS:-3}
OUT=$BENCH_DIR/results
BACKING=$BENCH_DIR/target.raw
NOTE=$REPO/bench/HTTP.md
RESULTS=$REPO/bench/RESULTS.md
IMG_BYTES=2147483648

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (losetup, drop_caches)"
[[ -x $BTY ]] || die "$BTY missing: run cargo build --release first"
mkdir -p "$OUT"

if [[ -z ${IMG_DIR:-} ]]; then
  if [[ -s /tmp/bench/img/disk.img.zst && -s /tmp/bench/img/disk.img ]]; then IMG_DIR=/tmp/bench/img
  else IMG_DIR=$BENCH_DIR/img; fi
fi
if [[ ! -s $IMG_DIR/disk.img.zst ]]; then
  log "making the test image in $IMG_DIR ($SHARED/bench/make-image.sh)"
  BENCH_DIR=$(dirname "$IMG_DIR") bash "$SHARED/bench/make-image.sh" >&2
fi
ZST=$IMG_DIR/disk.img.zst
IMG_SHA=$(awk '$1 == "disk.img" {print $3}' "$(dirname "$IMG_DIR")/images.txt" 2>/dev/null || true)
# openssl uses SHA-NI: 3x faster than sha256sum here
if command -v openssl >/dev/null; then SHA="openssl dgst -sha256 -r"; else SHA=sha256sum; fi
[[ -n $IMG_SHA ]] || IMG_SHA=$($SHA "$IMG_DIR/disk.img" | cut -d' ' -f1)

if [[ ! -f $BACKING ]] || (( $(stat -c %s "$BACKING") != IMG_BYTES )); then
  log "writing the backing file $BACKING"
  dd if=/dev/zero of="$BACKING" bs=4M count=$((IMG_BYTES / 4194304)) conv=fsync status=none
fi
LOOP=$(losetup --direct-io=on --show -f "$BACKING")
SERVER_PID=
cleanup() {
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
  losetup -d "$LOOP" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$IMG_DIR" >/dev/null 2>&1 &
SERVER_PID=$!
URL=http://127.0.0.1:$PORT/disk.img.zst
for _ in $(seq 100); do curl -sfI "$URL" >/dev/null && break; sleep 0.1; done
curl -sfI "$URL" >/dev/null || die "the http server did not start"
log "serving $IMG_DIR on 127.0.0.1:$PORT; target $LOOP"

# Zero-skip writers leave unwritten extents behind; every run starts from a fully written target.
ensure_full() {
  if (( $(stat -c %b "$BACKING") * 512 < IMG_BYTES )) || filefrag -v "$BACKING" 2>/dev/null | grep -q unwritten; then
    dd if=/dev/zero of="$LOOP" bs=4M count=$((IMG_BYTES / 4194304)) oflag=direct conv=fsync status=none
  fi
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
verify_target() {
  dd if="$LOOP" bs=4M iflag=direct count=$((IMG_BYTES / 4194304)) status=none | $SHA | cut -d' ' -f1
}

DDW="dd of=$LOOP bs=4M oflag=direct conv=fsync iflag=fullblock status=none"
CASES=(
  "curl-zstd-dd|curl -s $URL | zstd -dc | $DDW"
  "bty|$BTY flash $URL $LOOP --yes --progress none"
)
CSV=$OUT/runs.csv
SESSION=$(date -u +%Y%m%dT%H%M%SZ)
[[ -s $CSV ]] || echo "session,case,run,wall_s,user_s,sys_s,maxrss_kb,rc,verified" > "$CSV"

for ((r = 1; r <= RUNS; r++)); do
  for ((i = 0; i < ${#CASES[@]}; i++)); do
    c=${CASES[$(( (i + r - 1) % ${#CASES[@]} ))]}
    name=${c%%|*}; cmd=${c#*|}
    ensure_full
    drop_caches
    log "$name run $r/$RUNS"
    set +e
    /usr/bin/time -f '%e %U %S %M' -o "$OUT/.time" bash -c "set -o pipefail; $cmd" >/dev/null 2>"$OUT/$name.$r.stderr"
    rc=$?
    set -e
    read -r wall user sys rss < <(tail -1 "$OUT/.time")
    v=-
    if (( r == 1 )); then
      if [[ $(verify_target) == "$IMG_SHA" ]]; then v=ok; else v=MISMATCH; fi
    fi
    echo "$SESSION,$name,$r,$wall,$user,$sys,$rss,$rc,$v" >> "$CSV"
    log "  -> wall ${wall}s rc $rc verified $v"
  done
done

python3 - "$CSV" "$SESSION" "$NOTE" "$RESULTS" "$BTY" "$(stat -c %s "$ZST")" \
  "$(git -C "$REPO" rev-parse --short HEAD)" "$(curl --version | head -1 | cut -d' ' -f1-2)" \
  "$(zstd --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)" "${CASES[@]}" <<'PYEOF'
import csv, statistics as st, sys, datetime, re
csv_path, session, note, results, bty, zst_bytes, rev, curl, zstd = sys.argv[1:10]
cases = [c.split("|", 1) for c in sys.argv[10:]]
rows = [r for r in csv.DictReader(open(csv_path)) if r["session"] == session]
def stats(name):
    rs = [r for r in rows if r["case"] == name]
    ok = [float(r["wall_s"]) for r in rs if r["rc"] == "0"] or [float("nan")]
    cpu = [float(r["user_s"]) + float(r["sys_s"]) for r in rs if r["rc"] == "0"] or [float("nan")]
    return dict(med=st.median(ok), lo=min(ok), hi=max(ok), cpu=st.median(cpu), n=len(rs),
                rss=max(int(r["maxrss_kb"]) for r in rs) / 1024,
                verified=",".join(sorted({r["verified"] for r in rs} - {"-"})) or "-",
                rc=",".join(sorted({r["rc"] for r in rs})))
ref, bty_s = stats("curl-zstd-dd"), stats("bty")
ratio = ref["med"] / bty_s["med"]
def short(cmd):
    cmd = re.sub(r"http://127\.0\.0\.1:\d+/", "http://127.0.0.1:PORT/", cmd)
    cmd = re.sub(r"/dev/loop\d+", "T", cmd)
    return cmd.replace(bty, "bty")
o = ["## Flash over http (bench/http.sh)", "",
     f"Session {session}, bty commit {rev}, {rows and len(rows) // len(cases)} interleaved runs per case, page cache "
     f"dropped before each; `disk.img.zst` ({zst_bytes} bytes, 2 GiB decoded) served by `python3 -m http.server` "
     f"on 127.0.0.1 to both pipelines; target: a 2 GiB loop device with `--direct-io=on`; {curl}, zstd {zstd}.", "",
     "| pipeline | median wall s | min–max | MB/s | CPU s | max RSS MiB | verified | bty speedup |",
     "|---|---|---|---|---|---|---|---|"]
for name, cmd in cases:
    s = stats(name)
    sp = "" if name == "bty" else f"**{s['med'] / bty_s['med']:.2f}x**"
    o.append(f"| **{name}**: `{short(cmd)}` | {s['med']:.2f} | {s['lo']:.2f}–{s['hi']:.2f} | "
             f"{2147.48 / s['med']:.0f} | {s['cpu']:.2f} | {s['rss']:.0f} | {s['verified']} | {sp} |")
o += ["", f"bty / `curl | zstd -dc | dd`: **{ratio:.2f}x** (target ≥ 1.0x: {'met' if ratio >= 1.0 else 'NOT met'})."]
text = "\n".join(o) + "\n"
open(note, "w").write(text)
# RESULTS.md keeps this section between markers; bench/flash.sh puts HTTP.md there when it rewrites the file.
begin, end = "<!-- bench/http.sh -->", "<!-- /bench/http.sh -->"
block = f"{begin}\n{text}{end}\n"
try:
    cur = open(results).read()
except FileNotFoundError:
    cur = ""
if begin in cur and end in cur:
    a, rest = cur.split(begin, 1)
    _, b = rest.split(end, 1)
    cur = a + block + b.lstrip("\n")
else:
    cur = cur.rstrip("\n") + "\n\n" + block
open(results, "w").write(cur)
print(text)
PYEOF
