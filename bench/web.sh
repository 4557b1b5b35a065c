#!/usr/bin/env bash
# bty-web benchmark: the reference server (PyPI bty-lab==0.77.2, `bty-web`: FastAPI on uvicorn)
# and ours (target/release/bty-web) measured the same way in one run, one server at a time, each
# on 127.0.0.1 with its own fresh state dir and port:
#   1. start-up: spawn -> first 200 from GET /healthz (polled every ~1 ms), STARTS times each,
#      interleaved ref/bty, each on a fresh state dir; median
#   2. idle RSS (VmRSS) 1 s after start, and again after seeding
#   3. seed MACHINES machines with PUT /machines/{mac} over one keep-alive connection
#      (7/8 ipxe-exit, 1/16 bty-flash-once with an image ref and a target disk, 1/16
#      bty-inventory; one label each)
#   4. wrk -t2 -c16 --latency: GET /healthz, GET /machines (with the session cookie),
#      GET /pxe/{mac} cycling over every seeded MAC (bench/wrk/pxe.lua), then GET /pxe/{mac} for
#      a new MAC on every request (discovery: the write path)
#   5. peak RSS (VmHWM) after the load
# then prints a table (metric | reference | bty | ratio) and the targets, and under
# `make bench-web` (or WRITE=1) replaces the section between the bench-web markers of
# bench/RESULTS.md (appended when absent; the rest of the file is kept; bench/flash.sh keeps
# this section when it rewrites the rest).
#
# Network traffic goes to 127.0.0.1 only, except pip's install of the reference into
# $VENV (target/bench-venv) when that venv does not have it yet.
#
# Env: MACHINES=1000  STARTS=5  DURATION=10 (s per wrk run)  REF_PXE_DURATION=15 (the
#      reference's /pxe run: a few requests per second)  CONNS=16  THREADS=2
#      QUIET_WAIT=120, RUN_QUIET_WAIT=30 (s to wait for other load to stop before starting,
#      and before each wrk run; then it goes on anyway and the tables show it)
#      WORK=/tmp/bench-web.XXXX (logs, raw wrk output; kept; the databases are deleted
#      after their size is taken unless KEEP_STATE=1)
#      VENV=<repo>/target/bench-venv  BTY_WEB=<repo>/target/release/bty-web (make bench-web passes
#      the static musl build, which is what deployments run)
#      RESULTS=<repo>/bench/RESULTS.md  WRITE=1|0 (default: 1 under make, else 0)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_ENV=""
for v in MACHINES STARTS DURATION REF_PXE_DURATION CONNS THREADS VENV BTY_WEB; do
  [[ -n ${!v+x} ]] && CALLER_ENV+="$v=$(printf %q "${!v}") "
done
REF_PKG=bty-lab==0.77.2
VENV=${VENV:-$REPO/target/bench-venv}
BTY_WEB=${BTY_WEB:-$REPO/target/release/bty-web}
RESULTS=${RESULTS:-$REPO/bench/RESULTS.md}
MACHINES=${MACHINES:-1000}
STARTS=${STARTS:-5}
DURATION=${DURATION:-10}
REF_PXE_DURATION=${REF_PXE_DURATION:-15}
CONNS=${CONNS:-16}
THREADS=${THREADS:-2}
QUIET_WAIT=${QUIET_WAIT:-120}
RUN_QUIET_WAIT=${RUN_QUIET_WAIT:-30}
WRITE=${WRITE:-$([[ -n ${MAKELEVEL:-} ]] && echo 1 || echo 0)}
PASSWORD=bench-web-password
WORK=${WORK:-$(mktemp -d /tmp/bench-web.XXXXXX)}
KV=$WORK/results.kv
HELPER=$WORK/helper.py

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
# PIDS, running, put, kvget, cpu_ticks, busy_ticks and write_section.
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# Neither server may pick up settings from the caller's environment or /etc/bty: every
# BTY_* variable is dropped, and each server gets BTY_CONFIG_FILE = an empty bty.toml.
for v in ${!BTY_@}; do [[ $v == BTY_WEB ]] || unset "$v"; done

# ---- servers we started, stopped on exit whatever happens ----
# The servers are not our children (the Python helper spawns them), so unlike lib.sh's stop
# this does not wait for them; `running` counts a zombie as gone.
stop_server() { # PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1 i
  running "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do running "$pid" || return 0; sleep 0.1; done
  log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() { local p; for p in "${PIDS[@]}"; do stop_server "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- prerequisites ----
for t in wrk curl python3 git timeout /usr/bin/time; do command -v $t >/dev/null || die "$t is missing (make deps)"; done
[[ -x $BTY_WEB ]] || die "$BTY_WEB not found: cargo build --release (or make bench-web)"
mkdir -p "$WORK"
: > "$KV"
log "work dir $WORK"

if [[ $(timeout 60 "$VENV/bin/bty-web" --version 2>/dev/null) != "bty-web ${REF_PKG#*==}" ]]; then
  log "installing the reference ($REF_PKG) into $VENV"
  [[ -x $VENV/bin/pip ]] || python3 -m venv "$VENV"
  timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check "$REF_PKG" >&2
fi
REF_WEB=$VENV/bin/bty-web
[[ $(timeout 60 "$REF_WEB" --version 2>/dev/null) == "bty-web ${REF_PKG#*==}" ]] || die "$REF_WEB is not ${REF_PKG}"

# ---- the Python side: spawn-and-poll, seeding, rendering (stdlib only) ----
cat > "$HELPER" <<'PYEOF'
import http.client, json, os, re, socket, statistics, subprocess, sys, time

def freeport():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); print(p)

def healthz_ok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 12:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    except OSError:
        return False

def start(port, logpath, timeout, *cmd):
    """Spawn cmd (own session, output to logpath); poll GET /healthz every ~1 ms.
    Prints 'PID MS' (ms from spawn to the first 200); on failure kills it and prints
    'PID FAIL why'."""
    port, timeout = int(port), float(timeout)
    with open(logpath, "ab") as logf:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
    while True:
        if healthz_ok(port):
            print(p.pid, f"{(time.perf_counter() - t0) * 1000:.1f}")
            return
        if p.poll() is not None:
            print(p.pid, "FAIL", f"it exited with status {p.returncode} before answering")
            sys.exit(1)
        if time.perf_counter() - t0 > timeout:
            p.kill(); p.wait()
            print(p.pid, "FAIL", f"no 200 from GET /healthz within {timeout:.0f} s (killed)")
            sys.exit(1)
        time.sleep(0.001)

def mac(i):
    return f"52:54:00:00:{i >> 8:02x}:{i & 0xff:02x}"

def body(i):
    b = {"labels": [f"rack-{i % 10}"], "boot_mode": "ipxe-exit"}
    if i % 16 == 0:
        # an image ref (sha256 of a URL; no catalog row in either server) and a target disk
        b.update(boot_mode="bty-flash-once", target_disk_serial=f"SN-{i:04d}",
                 bty_image_ref="c17b64204e9d413c8c03d7d59e9fa0ff2305ae3485bc5f919a5d9afd46e9d0df")
    elif i % 16 == 8:
        b["boot_mode"] = "bty-inventory"
    return json.dumps(b).encode()

def seed(port, cookie, n):
    """PUT n machines over one keep-alive connection; prints 'seconds non2xx first_error'."""
    port, n = int(port), int(n)
    conn, bad, first = None, 0, "-"
    t0 = time.perf_counter()
    for i in range(n):
        for attempt in range(3):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("PUT", f"/machines/{mac(i)}", body=body(i),
                             headers={"Cookie": cookie, "Content-Type": "application/json"})
                r = conn.getresponse(); data = r.read()
                if r.will_close:
                    conn.close(); conn = None
                break
            except (OSError, http.client.HTTPException) as e:
                if conn: conn.close()
                conn = None
                if attempt == 2:
                    raise SystemExit(f"seed: PUT {mac(i)}: {e}")
        if not 200 <= r.status < 300:
            bad += 1
            if first == "-":
                first = f"{mac(i)}:{r.status}:{data[:200].decode(errors='replace')}".replace(" ", "_")
    print(f"{time.perf_counter() - t0:.3f}", bad, first)

def count(port, cookie):
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
    c.request("GET", "/machines", headers={"Cookie": cookie})
    r = c.getresponse(); data = r.read()
    print(r.status, len(json.loads(data)) if r.status == 200 else 0)

def logstats(path):
    """Status classes of the access log (ours: 'bty-web: GET /p 200 ...', uvicorn:
    '"GET /p HTTP/1.1" 200 OK'), and lines that look like panics or tracebacks."""
    st, odd = {}, []
    pat = re.compile(r'^bty-web: [A-Z]+ \S+ (\d{3}) |"[A-Z]+ \S+ HTTP/1\.[01]" (\d{3}) ')
    for line in open(path, errors="replace"):
        m = pat.search(line)
        if m:
            k = (m.group(1) or m.group(2))[0] + "xx"
            st[k] = st.get(k, 0) + 1
        elif re.search(r"panic|Traceback|ERROR|error", line) and len(odd) < 5:
            odd.append(line.strip()[:160])
    print(" ".join(f"{k}={v}" for k, v in sorted(st.items())) or "none")
    for o in odd:
        print("odd:", o)

def render(kvpath):
    kv = {}
    for line in open(kvpath):
        k, _, v = line.rstrip("\n").partition("=")
        kv[k] = v
    def wrk(s, route):
        return dict(x.split("=") for x in kv.get(f"{s}.wrk.{route}", "").split())
    def num(x):
        try: return float(x)
        except (TypeError, ValueError): return float("nan")
    def med(s):
        v = [num(x) for x in kv.get(f"{s}.start_ms", "").split()]
        return statistics.median(v) if v else float("nan")
    def mib(s, k): return num(kv.get(f"{s}.{k}")) / 1024
    nan = float("nan")
    def f(x, d=1): return "–" if x != x else f"{x:,.{d}f}"
    def ratio(r, b, higher_better):
        if r != r or b != b or r == 0 or b == 0: return "–"
        return f"{(b / r if higher_better else r / b):,.1f}x"
    routes = [("healthz", "GET /healthz"), ("machines", "GET /machines (cookie)"),
              ("pxe", f"GET /pxe/{{mac}} over {kv['machines']} MACs"),
              ("pxenew", "GET /pxe/{mac}, a new MAC each (discovery)")]
    rows = []  # (metric, ref, bty, ratio)
    sm = {s: med(s) for s in ("ref", "bty")}
    rows.append((f"start-up: spawn → first 200 from GET /healthz, ms (median of {kv['starts']})",
                 f(sm["ref"]), f(sm["bty"]), ratio(sm["ref"], sm["bty"], False)))
    for k, label in [("rss_idle_kb", "idle RSS 1 s after start, MiB"),
                     ("rss_seeded_kb", f"idle RSS after seeding {kv['machines']} machines, MiB"),
                     ("hwm_kb", f"peak RSS (VmHWM) after the load runs on {kv['machines']} machines, MiB"),
                     ("hwm_new_kb", "peak RSS after the discovery run too (its new machines on top), MiB")]:
        r, b = mib("ref", k), mib("bty", k)
        rows.append((label, f(r), f(b), ratio(r, b, False)))
    r, b = num(kv.get("ref.seed_s")), num(kv.get("bty.seed_s"))
    n = num(kv["machines"])
    rows.append((f"seeding: {kv['machines']} × PUT /machines/{{mac}}, one connection, s (PUT/s)",
                 f"{f(r, 2)} ({f(n / r, 0)})", f"{f(b, 2)} ({f(n / b, 0)})", ratio(r, b, False)))
    r, b = mib("ref", "disk_kb"), mib("bty", "disk_kb")
    rows.append(("state dir on disk after the load (SQLite -wal file), MiB",
                 f"{f(r)} ({f(mib('ref', 'wal_kb'))})", f"{f(b)} ({f(mib('bty', 'wal_kb'))})",
                 ratio(r, b, False)))
    for route, label in routes:
        wr, wb = wrk("ref", route), wrk("bty", route)
        rr, rb = num(wr.get("rps")), num(wb.get("rps"))
        rows.append((f"{label}: requests/s", f(rr), f(rb), ratio(rr, rb, True)))
        for p in ("p50", "p99"):
            r, b = num(wr.get(f"{p}_us")) / 1000, num(wb.get(f"{p}_us")) / 1000
            rows.append((f"{label}: {p} latency, ms", f(r, 2), f(b, 2), ratio(r, b, False)))
    o = []
    o.append("| metric | reference | bty | ratio (>1: bty better) |")
    o.append("|---|---|---|---|")
    for m, r, b, x in rows:
        o.append(f"| {m} | {r} | {b} | {x} |")
    # per-run details: what wrk saw, what the access log says, server CPU
    o.append("")
    o.append(f"Start-up runs, ms: reference {kv.get('ref.start_ms')}; bty {kv.get('bty.start_ms')}.")
    o.append("")
    o.append("wrk runs (`-t%s -c%s --latency --timeout 30s`), in this order. wrk and the server share "
             "the 2 cores: server CPU + wrk CPU near 2 x the run's seconds means the machine, not "
             "the server alone, was the limit. *Rest of the machine* = all busy CPU time "
             "(/proc/stat) less the server's and wrk's: softirq for loopback traffic, and any other "
             "process (more than a second or two means something else was running and the run is "
             "suspect). *VmHWM after* is the server's peak RSS so far "
             "(after seeding: ref %s MiB, bty %s MiB):"
             % (kv["threads"], kv["conns"], f(mib("ref", "hwm_seeded_kb")), f(mib("bty", "hwm_seeded_kb"))))
    o.append("")
    o.append("| server | route | s | requests | requests/s | p50 ms | p90 ms | p99 ms | max ms | "
             "non-2xx/3xx | socket errors (connect/read/write/timeout) | server CPU s | wrk CPU s | "
             "rest of the machine CPU s | machine busy just before | VmHWM after, MiB |")
    o.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in ("ref", "bty"):
        for route, _ in routes:
            w = wrk(s, route)
            if not w: continue
            ms = lambda k: f(num(w[k]) / 1000, 2)
            o.append(f"| {s} | {route} | {num(w['duration_us']) / 1e6:.1f} | {w['requests']} | "
                     f"{f(num(w['rps']))} | {ms('p50_us')} | {ms('p90_us')} | {ms('p99_us')} | "
                     f"{ms('max_us')} | {w['status']} | {w['connect']}/{w['read']}/{w['write']}/"
                     f"{w['timeout']} | {kv.get(f'{s}.cpu.{route}', '?')} | {kv.get(f'{s}.wrkcpu.{route}', '?')} | "
                     f"{f(num(kv.get(f'{s}.busy.{route}')) - num(kv.get(f'{s}.cpu.{route}')) - num(kv.get(f'{s}.wrkcpu.{route}')))} | "
                     f"{kv.get(f'{s}.quiet.{route}', '?')}% | {f(mib(s, f'hwm.{route}'))} |")
    # targets
    def wv(s, route, k): return num(wrk(s, route).get(k))
    pxe, pxe99 = wv("bty", "pxe", "rps"), wv("bty", "pxe", "p99_us") / 1000
    mach, hz = wv("bty", "machines", "rps"), wv("bty", "healthz", "rps")
    idle = max(mib("bty", "rss_idle_kb"), mib("bty", "rss_seeded_kb"))
    ref_idle = max(mib("ref", "rss_idle_kb"), mib("ref", "rss_seeded_kb"))
    hwm = mib("bty", "hwm_kb")
    def met(ok): return "**met**" if ok else "**missed**"
    t = []
    t.append(("GET /pxe/{mac} ≥ 5,000 requests/s with p99 < 10 ms", met(pxe >= 5000 and pxe99 < 10),
              f"{f(pxe)} requests/s, p99 {f(pxe99, 2)} ms"))
    # Not a target of the issue: the same bar for the write path, where every contact is a new
    # machine (a write transaction with two events), so that the cheap repeat path above does
    # not hide what a first contact costs.
    new, new99 = wv("bty", "pxenew", "rps"), wv("bty", "pxenew", "p99_us") / 1000
    t.append(("(same bar, write path) GET /pxe/{mac} for new MACs ≥ 5,000 requests/s with p99 < 10 ms",
              met(new >= 5000 and new99 < 10), f"{f(new)} requests/s, p99 {f(new99, 2)} ms"))
    t.append(("GET /machines ≥ 1,000 requests/s", met(mach >= 1000), f"{f(mach)} requests/s"))
    t.append(("GET /healthz ≥ 20,000 requests/s", met(hz >= 20000), f"{f(hz)} requests/s"))
    t.append(("idle RSS ≤ 6 MiB (after start and after seeding)", met(idle <= 6),
              f"{f(mib('bty', 'rss_idle_kb'))} / {f(mib('bty', 'rss_seeded_kb'))} MiB"))
    t.append(("RSS under load ≤ 20 MiB (VmHWM)", met(hwm <= 20), f"{f(hwm)} MiB"))
    t.append(("first /healthz within 50 ms of spawn (median)", met(sm["bty"] <= 50),
              f"{f(sm['bty'])} ms"))
    # The issue's 20x goal is for /pxe and /machines; /healthz has its absolute target above
    # (on 2 shared cores the load generator and loopback bound it, not the server).
    for route, label in routes:
        if route == "healthz":
            continue
        r, b = wv("ref", route, "rps"), wv("bty", route, "rps")
        t.append((f"≥ 20x the reference's requests/s on {label.split(' (')[0]}",
                  met(b == b and r == r and b >= 20 * r), ratio(r, b, True)))
    t.append(("idle RSS ≤ 1/10 of the reference's", met(idle * 10 <= ref_idle),
              f"{f(idle)} vs {f(ref_idle)} MiB ({ratio(ref_idle, idle, False)} smaller)"))
    o.append("")
    o.append("| target (bty) | status | numbers |")
    o.append("|---|---|---|")
    for x in t:
        o.append(f"| {x[0]} | {x[1]} | {x[2]} |")
    print("\n".join(o))

if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
PYEOF
py() { python3 "$HELPER" "$@"; }

# ---- one server's life ----
# Both get the same environment: an empty BTY_CONFIG_FILE, the state dir, the password.
# start_server ref|bty DIR PORT -> sets SRV_PID and SRV_MS
start_server() {
  local who=$1 dir=$2 port=$3 out pid ms why
  mkdir -p "$dir"
  : > "$dir/bty.toml"
  local envs=(BTY_CONFIG_FILE="$dir/bty.toml" BTY_ADMIN_PASSWORD="$PASSWORD")
  local cmd
  if [[ $who == ref ]]; then
    envs+=(BTY_PATHS_STATE_DIR="$dir" BTY_SERVER_HOST=127.0.0.1 BTY_SERVER_PORT="$port")
    cmd=("$REF_WEB")
  else
    cmd=("$BTY_WEB" --listen "127.0.0.1:$port" --state-dir "$dir")
    # The new-MAC run discovers far more machines, from one address, than the discovery caps
    # let in; it measures the discovery write path, so the caps are off (the reference has none).
    envs+=(BTY_PXE_MAX_DISCOVERED=0 BTY_PXE_DISCOVERIES_PER_MINUTE=0)
  fi
  out=$(env "${envs[@]}" python3 "$HELPER" start "$port" "$dir/server.log" 60 "${cmd[@]}") || true
  read -r pid ms why <<< "$out"
  if [[ -z ${ms:-} || $ms == FAIL ]]; then
    log "$who on 127.0.0.1:$port: ${why:-the start helper failed}; its log ($dir/server.log):"
    tail -n 40 "$dir/server.log" >&2 || true
    exit 1
  fi
  PIDS+=("$pid")
  SRV_PID=$pid SRV_MS=$ms
}

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# wait until PID uses (almost) no CPU for 0.5 s (the reference goes on with queued requests
# after wrk has hung up); at most 60 s
wait_idle() {
  local pid=$1 a b i
  for ((i = 0; i < 120; i++)); do
    a=$(cpu_ticks "$pid"); sleep 0.5; b=$(cpu_ticks "$pid")
    (( b - a <= 2 )) && return 0
  done
  log "  (pid $pid still busy after 60 s)"
}
# wait_quiet WINDOW MAX: wait until the machine (our servers included) was at most 10% busy
# over WINDOW seconds, for at most MAX seconds; QUIET = the last window's busy percentage
wait_quiet() {
  local window=$1 max=$2 waited b0 b1
  for ((waited = 0; ; waited += window)); do
    b0=$(busy_ticks); sleep "$window"; b1=$(busy_ticks)
    QUIET=$(awk -v t=$((b1 - b0)) -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" -v w="$window" \
      'BEGIN{printf "%.0f", 100 * t / hz / w / n}')
    (( QUIET <= 10 || waited >= max )) && return 0
    (( waited % 20 == 0 )) && log "  the machine is ${QUIET}% busy (load $(cut -d' ' -f1 /proc/loadavg)): waiting up to ${max}s for it to calm down"
  done
}
alive() { running "$1" || { log "$2 (pid $1) died; its log:"; tail -n 40 "$3" >&2; exit 1; }; }

login() { # PORT -> the cookie "bty-token=..."
  curl -s -m 30 -o /dev/null -D - -d "password=$PASSWORD" "http://127.0.0.1:$1/ui/login" \
    | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: *\(bty-token=[^;]*\).*/\1/p' | head -1
}

# wrk WHO ROUTE PORT SECONDS [wrk args...]: runs it, records the WRK_RESULT line and server CPU
run_wrk() {
  local who=$1 route=$2 port=$3 secs=$4 pid=$5; shift 5
  local out=$WORK/wrk-$who-$route.txt a b m0 m1 line
  wait_quiet 1 "$RUN_QUIET_WAIT"
  put "$who.quiet.$route" "$QUIET"
  log "  wrk $route: ${secs}s, -t$THREADS -c$CONNS (machine ${QUIET}% busy just before)"
  a=$(cpu_ticks "$pid") m0=$(busy_ticks)
  /usr/bin/time -o "$out.time" -f '%U %S' timeout $((secs + 60)) wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 30s --latency "$@" > "$out" 2>&1 \
    || { cat "$out" >&2; die "wrk $who $route failed"; }
  b=$(cpu_ticks "$pid") m1=$(busy_ticks)
  line=$(sed -n 's/^WRK_RESULT //p' "$out")
  [[ -n $line ]] || { cat "$out" >&2; die "wrk $who $route printed no WRK_RESULT line"; }
  put "$who.wrk.$route" "$line"
  put "$who.hwm.$route" "$(status_kb "$pid" VmHWM)"
  put "$who.wrkcpu.$route" "$(awk 'END{printf "%.1f", $1 + $2}' "$out.time")"
  put "$who.cpu.$route" "$(awk -v t=$((b - a)) -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", t / hz}')"
  put "$who.busy.$route" "$(awk -v t=$((m1 - m0)) -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", t / hz}')"
  log "    $line"
  alive "$pid" "$who" "$WORK/$who/server.log"
  wait_idle "$pid"
}

measure() { # ref|bty: everything but the start-up series, on a fresh state dir
  local who=$1 dir=$WORK/$1 port cookie seed bad st n first out
  port=$(py freeport)
  log "$who: starting on 127.0.0.1:$port, state dir $dir"
  start_server "$who" "$dir" "$port"
  local pid=$SRV_PID
  sleep 1
  put "$who.rss_idle_kb" "$(status_kb "$pid" VmRSS)"
  put "$who.threads_idle" "$(status_kb "$pid" Threads)"
  put "$who.children" "$(ps --ppid "$pid" -o pid= | wc -l)"
  cookie=$(login "$port")
  [[ $cookie == bty-token=?* ]] || die "$who: POST /ui/login gave no bty-token cookie"
  log "$who: seeding $MACHINES machines"
  out=$(py seed "$port" "$cookie" "$MACHINES") || die "$who: seeding failed"
  read -r seed bad first <<< "$out"
  put "$who.seed_s" "$seed"; put "$who.seed_non2xx" "$bad"
  (( bad == 0 )) || log "  $who: $bad PUTs were not 2xx, the first: $first"
  out=$(py count "$port" "$cookie") || die "$who: GET /machines failed"
  read -r st n <<< "$out"
  [[ $st == 200 && $n == "$MACHINES" ]] || die "$who: GET /machines answered $st with $n machines (expected $MACHINES)"
  st=$(curl -s -m 30 -o "$WORK/$who-pxe-sample.txt" -w '%{http_code}' "http://127.0.0.1:$port/pxe/52:54:00:00:00:00")
  [[ $st == 200 ]] && head -c 6 "$WORK/$who-pxe-sample.txt" | grep -q '^#!ipxe' \
    || die "$who: GET /pxe/52:54:00:00:00:00 answered $st: $(head -c 300 "$WORK/$who-pxe-sample.txt")"
  wait_idle "$pid"
  sleep 1
  put "$who.rss_seeded_kb" "$(status_kb "$pid" VmRSS)"
  put "$who.hwm_seeded_kb" "$(status_kb "$pid" VmHWM)"
  log "$who: idle RSS $(status_kb "$pid" VmRSS) kB after seeding (seeding took ${seed}s)"

  local base=http://127.0.0.1:$port pxe_secs=$DURATION
  [[ $who == ref ]] && pxe_secs=$REF_PXE_DURATION
  run_wrk "$who" healthz "$port" "$DURATION" "$pid" -s "$REPO/bench/wrk/report.lua" "$base/healthz"
  run_wrk "$who" machines "$port" "$DURATION" "$pid" -s "$REPO/bench/wrk/report.lua" \
    -H "Cookie: $cookie" "$base/machines"
  run_wrk "$who" pxe "$port" "$pxe_secs" "$pid" -s "$REPO/bench/wrk/pxe.lua" "$base" -- "$MACHINES" "$THREADS"
  # The RSS target is for the seeded fleet: taken before the discovery run adds machines.
  put "$who.hwm_kb" "$(status_kb "$pid" VmHWM)"
  run_wrk "$who" pxenew "$port" "$pxe_secs" "$pid" -s "$REPO/bench/wrk/pxe.lua" "$base" -- "$MACHINES" "$THREADS" new
  put "$who.hwm_new_kb" "$(status_kb "$pid" VmHWM)"
  put "$who.threads_after" "$(status_kb "$pid" Threads)"
  stop_server "$pid"
  # what the load left on disk (SQLite's -wal file included), then drop the databases
  put "$who.disk_kb" "$(du -sk --exclude=server.log "$dir" | cut -f1)"
  put "$who.wal_kb" "$(cat "$dir"/*-wal 2>/dev/null | wc -c | awk '{printf "%d", $1 / 1024}')"
  [[ -n ${KEEP_STATE:-} ]] || rm -f "$dir"/*.db "$dir"/*.db-wal "$dir"/*.db-shm
  py logstats "$dir/server.log" > "$WORK/$who-logstats.txt"
  put "$who.log" "$(head -1 "$WORK/$who-logstats.txt")"
  log "$who: access log status classes: $(head -1 "$WORK/$who-logstats.txt")"
  sed -n 's/^odd: /  log: /p' "$WORK/$who-logstats.txt" >&2
}

# ---- facts ----
rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -1)
if [[ -n ${MAKELEVEL:-} ]]; then cmdline="${CALLER_ENV}make bench-web"; else cmdline="${CALLER_ENV}bench/web.sh"; fi
put command "$cmdline"
put date "$(date -u +%FT%TZ)"
put commit "$rev${dirty:+ (+uncommitted changes in src)}"
put machine "$(lscpu | sed -n 's/^Model name: *//p') x $(nproc) ($(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1) guest), $(free -g | awk '/^Mem:/{print $2}') GiB, Linux $(uname -r)"
put tools "$(wrk --version 2>&1 | head -1 | awk '{print "wrk", $2}'), $("$VENV/bin/python3" --version), curl $(curl --version | awk 'NR==1{print $2}')"
put ref "$REF_PKG ($(timeout 60 "$REF_WEB" --version); uvicorn $("$VENV/bin/python3" -c 'import uvicorn; print(uvicorn.__version__)'), $("$VENV/bin/python3" -c 'import importlib.util as u; print("uvloop+httptools" if u.find_spec("uvloop") and u.find_spec("httptools") else "asyncio+h11")'))"
put bty "$(timeout 10 "$BTY_WEB" --version 2>&1 | head -1), $(stat -c %s "$BTY_WEB") bytes"
put machines "$MACHINES"; put starts "$STARTS"; put conns "$CONNS"; put threads "$THREADS"

# Anything else running skews every figure here (2 cores).
wait_quiet 2 "$QUIET_WAIT"
put background "$QUIET% of the machine's CPU busy in the 2 s before the run ($(cut -d' ' -f1-3 /proc/loadavg) load average)"
(( QUIET <= 10 )) || log "warning: the machine is ${QUIET}% busy before the benchmark (load $(cut -d' ' -f1 /proc/loadavg)); the figures will suffer"

# ---- 1. start-up, interleaved ----
log "start-up: $STARTS runs each, interleaved, fresh state dir each"
for ((i = 1; i <= STARTS; i++)); do
  for who in ref bty; do
    port=$(py freeport)
    start_server "$who" "$WORK/start-$who-$i" "$port"
    echo "$SRV_MS" >> "$WORK/start-$who.txt"
    log "  $who run $i: ${SRV_MS} ms"
    stop_server "$SRV_PID"
  done
done
put ref.start_ms "$(paste -sd' ' "$WORK/start-ref.txt")"
put bty.start_ms "$(paste -sd' ' "$WORK/start-bty.txt")"

# ---- 2-5, one server at a time ----
measure ref
measure bty

# ---- report ----
TABLE=$(py render "$KV")
SECTION=$(cat <<EOF
<!-- bench-web:begin (written by bench/web.sh; replaced on each \`make bench-web\`) -->
# bty-web benchmark

Generated by \`$(kvget command)\` (bench/web.sh) on $(kvget date), bty-web at commit $(kvget commit).
Raw output (wrk, server logs) was in \`$WORK\`.

- machine: $(kvget machine)
- reference: $(kvget ref), started as \`bty-web\` with BTY_PATHS_STATE_DIR, BTY_SERVER_HOST=127.0.0.1, BTY_SERVER_PORT, BTY_ADMIN_PASSWORD and an empty BTY_CONFIG_FILE (uvicorn, one worker, its default INFO access log to a file)
- bty: $(kvget bty), started as \`bty-web --listen 127.0.0.1:PORT --state-dir DIR\` with BTY_ADMIN_PASSWORD and an empty BTY_CONFIG_FILE (its access log to a file)
- tools: $(kvget tools)
- background: $(kvget background)
- procedure: one server at a time, each on a fresh state dir; start-up = spawn to the first 200 from GET /healthz (polled every ~1 ms), $(kvget starts) runs each interleaved, each on a fresh state dir; RSS from /proc/PID/status (1 MiB = 1024 KiB); $(kvget machines) machines seeded with PUT /machines/{mac} (7/8 ipxe-exit, 1/16 bty-flash-once with an image ref and a target disk, 1/16 bty-inventory; one label each); wrk \`-t$(kvget threads) -c$(kvget conns) --latency --timeout 30s\` on the same 2 cores as the server, in the order /healthz, /machines, /pxe (${DURATION} s each; the reference's /pxe ${REF_PXE_DURATION} s), waiting for the server to go idle between runs. /pxe cycles over every seeded MAC (bench/wrk/pxe.lua): the reference writes last-seen and a pxe.offered event on every request; bty writes only what changed (last-seen at most once a second per MAC and address, a repeated identical offer at most once per 10 s), so most of these contacts are answered from a reader. /pxe (new MACs) asks for a MAC never seen on every request: a discovery, one write transaction with the machine and its events, in both servers.
- access-log status classes over the whole run: reference $(kvget ref.log); bty $(kvget bty.log)

$TABLE
<!-- bench-web:end -->
EOF
)
echo
echo "$SECTION" | tee "$WORK/section.md"

if [[ $WRITE == 1 ]]; then
  write_section "$RESULTS" "$WORK/section.md" "<!-- bench-web:begin" "<!-- bench-web:end -->" bty-web
fi
