# Shared by bench/dataplane.sh, bench/fleet.sh and bench/web.sh, which
# source it after setting WORK (their work dir), KV (their key=value results file) and PASSWORD,
# and after defining log and die. Processes started go into PIDS; the caller's EXIT trap calls
# stop_all.

PIDS=()

running() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

stop() { # PID: SIGTERM (nginx: a fast shutdown), up to 10 s, then SIGKILL
  local pid=$1 i
  running "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do running "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }; sleep 0.1; done
  log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do stop "$p"; done
}

put() { echo "$1=$2" >> "$KV"; }
kvget() { sed -n "s/^$1=//p" "$KV" | tail -1; }

# A server's processes: bty-web is one; nginx is its master and the workers.
procs() { echo "$1"; [[ $1 == "${NGINX_PID:-}" ]] && ps --ppid "$1" -o pid= || true; }
# CPU clock ticks (user + system) and peak RSS (VmHWM, KiB) of a server's processes, added up.
cpu_ticks() { local p; for p in $(procs "$1"); do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }
hwm_kb() { local p; for p in $(procs "$1"); do awk '$1 == "VmHWM:" {print $2}' "/proc/$p/status"; done | awk '{s += $1} END {print s}'; }
# The machine's busy clock ticks, all cores (user nice system irq softirq; not idle, iowait, steal).
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

get_whole() { # URL BYTES: one whole GET, which must be a 200 of BYTES bytes
  local got
  got=$(curl -s -m 600 -o /dev/null -w '%{http_code} %{size_download}' "$1")
  [[ $got == "200 $2" ]] || die "GET $1 answered $got (expected 200 $2)"
}

freeport() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_nginx PORT ROOT [HTTP_LINES]: nginx in the foreground with a config of its own under
# $WORK/nginx (nothing of the system's), serving ROOT on 127.0.0.1:PORT with sendfile on;
# sets NGINX_PID.
start_nginx() {
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  ${3:-}
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx/body;
  server { listen 127.0.0.1:$1; root $2; }
}
CONF
  "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" > "$WORK/nginx/stdout.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
}

wait_up() { # URL NAME PID: wait up to 60 s for a 200
  local i
  for ((i = 0; i < 600; i++)); do
    [[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' -I "$1") == 200 ]] && return 0
    running "$3" || die "$2 exited; see $WORK"
    sleep 0.1
  done
  die "$2 gave no 200 for $1 within 60 s"
}

# import_pinned BPORT NPORT ROOT NAME SHA FORMAT BYTES: a catalog entry pinned to SHA imported
# into bty-web, so that /images/SHA/NAME serves its cache file. bty-web imports catalogs from
# URLs, so nginx serves this one from ROOT; the entry's src is unreachable on purpose: every
# byte comes from the cache.
import_pinned() {
  local bport=$1 nport=$2 root=$3 name=$4 sha=$5 format=$6 bytes=$7 cookie answer
  cat > "$root/catalog.toml" <<TOML
version = 1

[[images]]
name = "$name"
src = "http://127.0.0.1:9/$name"
sha256 = "$sha"
format = "$format"
size_bytes = $bytes
TOML
  cookie=$(curl -s -m 30 -o /dev/null -D - -d "password=$PASSWORD" "http://127.0.0.1:$bport/ui/login" \
    | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: *\(bty-token=[^;]*\).*/\1/p' | head -1)
  [[ $cookie == bty-token=?* ]] || die "bty-web: POST /ui/login gave no bty-token cookie"
  answer=$(curl -s -m 60 -X POST -H "Cookie: $cookie" \
    "http://127.0.0.1:$bport/catalog/import?source=http%3A%2F%2F127.0.0.1%3A$nport%2Fcatalog.toml")
  [[ $answer == *'"errors":[]'* ]] || die "bty-web: the catalog import answered $answer"
}

# write_section RESULTS FILE START END WHAT: the text of FILE (which holds both markers) in
# place of the part of RESULTS from the line starting with START to END, or appended when
# RESULTS has none; the rest of RESULTS is kept.
write_section() {
  python3 - "$@" <<'PYEOF'
import os, re, sys
results, path, start, end, what = sys.argv[1:6]
section = open(path).read().rstrip("\n") + "\n"
old = open(results).read() if os.path.exists(results) else ""
pat = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
if pat.search(old):
    new = pat.sub(lambda _: section, old, count=1)
else:
    new = (old.rstrip("\n") + "\n\n" if old else "") + section
open(results, "w").write(new)
print(f"wrote the {what} section of {results}", file=sys.stderr)
PYEOF
}
