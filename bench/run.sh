#!/usr/bin/env bash
# Strait's benchmark: the same scenarios through no proxy, nginx (stream, 1
# worker), HAProxy (1 thread) and Strait (1 worker thread), side by side.
#
#   bash bench/run.sh            # full run
#   bash bench/run.sh --quick    # shorter runs, fewer idle sessions (< 3 min)
#
# The proxy under test is pinned to CPU 0 and the load and backends to CPU 1
# (taskset), and for every scenario the proxy's own CPU time per unit of work
# is read from /proc/PID/stat beside the rates. Each scenario runs twice; both
# figures are shown. Before measuring, each proxy must pass correctness
# checks (plain echo, TLS termination with the right certificate for the SNI,
# passthrough by SNI, refusal of an unknown SNI); a proxy that fails gets no
# numbers. Results: a Markdown table on stdout and in bench/results/, plus CSV.
set -euo pipefail

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d /tmp/strait-bench.XXXXXX)
RESULTS="$HERE/results"
mkdir -p "$RESULTS"
# Proxies are started inside $(...) and so are not this shell's jobs: their
# PIDs are listed in $WORK/pids for the exit trap.
cleanup() {
  local status=$?
  jobs -p | xargs -r kill 2>/dev/null || true
  if [ -f "$WORK/pids" ]; then xargs -r kill 2>/dev/null < "$WORK/pids" || true; fi
  pkill -f "iperf3 -s -p 19003" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT

# Idle sessions: enough in --quick too that memory the proxy freed at start-up
# and reuses cannot hide the per-session cost (it does at 2,000).
if [ $QUICK = 1 ]; then SECS=2; IDLE=6000; IPERF_SECS=2; else SECS=5; IDLE=9000; IPERF_SECS=5; fi

# --- Tools -----------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx libnginx-mod-stream)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((IDLE * 3 + 100)) ]; then
  IDLE=$(( ($(ulimit -n) - 100) / 3 ))
  echo "open-file limit $(ulimit -n): idle sessions reduced to $IDLE" >&2
fi
# HAProxy refuses to start when maxconn needs more descriptors than allowed.
MAXCONN=$(( ($(ulimit -n) - 100) / 2 ))

echo "building (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p strait -p strait-bench)
STRAIT="$ROOT/target/release/strait"
GEN="$ROOT/target/release/strait-bench"
LOAD="taskset -c 1"
PROXYCPU="taskset -c 0"
TCK=$(getconf CLK_TCK)

# --- Backends (on CPU 1) ---------------------------------------------------
ECHO=19001; TLSECHO=19002; IPERF=19003
"$GEN" certs --out "$WORK/certs"
$LOAD "$GEN" echo --listen 127.0.0.1:$ECHO --threads 1 >/dev/null 2>&1 &
$LOAD "$GEN" echo --listen 127.0.0.1:$TLSECHO --cert "$WORK/certs/pt.test.crt" --key "$WORK/certs/pt.test.key" >/dev/null 2>&1 &
pkill -f "iperf3 -s -p $IPERF" 2>/dev/null || true
$LOAD iperf3 -s -p $IPERF -D --logfile "$WORK/iperf.log"

# Every proxy listens on: plain P, TLS termination P+1, passthrough P+2, iperf P+3.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Stops a proxy and waits until it is gone (it is not this shell's child).
stop_pid() { kill "$1" 2>/dev/null || true; for _ in $(seq 1 200); do [ -d "/proc/$1" ] || return 0; sleep 0.05; done; kill -9 "$1" 2>/dev/null || true; }
wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
for port in $ECHO $TLSECHO $IPERF; do wait_port $port || { echo "backend on $port did not start" >&2; exit 1; }; done

start_nginx() {
  local p=$1
  cat > "$WORK/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
master_process off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 40000; }
stream {
  map \$ssl_preread_server_name \$pt { pt.test 127.0.0.1:$TLSECHO; default 127.0.0.1:1; }
  server { listen 127.0.0.1:$p; proxy_pass 127.0.0.1:$ECHO; }
  server {
    listen 127.0.0.1:$((p + 1)) ssl;
    ssl_certificate $WORK/certs/bench.test.crt;
    ssl_certificate_key $WORK/certs/bench.test.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    proxy_pass 127.0.0.1:$ECHO;
  }
  server { listen 127.0.0.1:$((p + 2)); ssl_preread on; proxy_pass \$pt; }
  server { listen 127.0.0.1:$((p + 3)); proxy_pass 127.0.0.1:$IPERF; }
}
EOF
  # Output away from the caller's $(...), which would otherwise wait for it.
  $PROXYCPU nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.out" 2>&1 &
  echo $! >> "$WORK/pids"
  echo $!
}

start_haproxy() {
  local p=$1
  cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $MAXCONN
  tune.ssl.cachesize 0
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend plain
  bind 127.0.0.1:$p
  default_backend echo
frontend tls
  bind 127.0.0.1:$((p + 1)) ssl crt $WORK/certs/bench.test.pem ssl-min-ver TLSv1.3 no-tls-tickets
  default_backend echo
frontend pass
  bind 127.0.0.1:$((p + 2))
  tcp-request inspect-delay 5s
  tcp-request content accept if { req_ssl_hello_type 1 }
  use_backend tlsecho if { req_ssl_sni -i pt.test }
frontend iperf
  bind 127.0.0.1:$((p + 3))
  default_backend iperf
backend echo
  server s 127.0.0.1:$ECHO
backend tlsecho
  server s 127.0.0.1:$TLSECHO
backend iperf
  server s 127.0.0.1:$IPERF
EOF
  $PROXYCPU haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.out" 2>&1 &
  echo $! >> "$WORK/pids"
  echo $!
}

# Strait, and Strait with a data phase on every route (what the feature costs
# a session that uses it): "native" runs the kit's example plugin with
# count_bytes (passes every chunk on, counting it), "wasm" a proxy-wasm
# filter that passes every chunk on (tests/wasm/out/passthrough.wasm).
start_strait() { strait_variant "$1" none; }
start_strait_native() { strait_variant "$1" native; }
start_strait_wasm() { strait_variant "$1" wasm; }

strait_variant() {
  local p=$1 variant=$2 name=strait extra="" settings="" chain=""
  [ "$variant" = none ] || name=strait_$variant
  case $variant in
    native)
      extra=$'plugins:\n- {name: tag-session, config: {tag: bench, count_bytes: true}}'
      settings='plugins = ["bundled", "tag-session"]' ;;
    wasm)
      mkdir -p "$WORK/filters"
      cp "$ROOT/tests/wasm/out/passthrough.wasm" "$WORK/filters/"
      chain="  filter_chains: [{filters: [{name: passthrough}]}]"
      settings=$'wasm = "on"\n'"wasm_filters_path = \"$WORK/filters\"" ;;
  esac
  cat > "$WORK/$name.yml" <<EOF
_format_version: "3.0"
certificates:
- cert: |
$(sed 's/^/    /' "$WORK/certs/bench.test.crt")
  key: |
$(sed 's/^/    /' "$WORK/certs/bench.test.key")
  snis: [bench.test]
services:
- url: tcp://127.0.0.1:$ECHO
$chain
  routes:
  - {protocols: [tcp], destinations: [{port: $p}]}
  - {protocols: [tls], snis: [bench.test]}
- url: tcp://127.0.0.1:$TLSECHO
$chain
  routes: [{protocols: [tls_passthrough], snis: [pt.test]}]
- url: tcp://127.0.0.1:$IPERF
$chain
  routes: [{protocols: [tcp], destinations: [{port: $((p + 3))}]}]
$extra
EOF
  cat > "$WORK/$name.toml" <<EOF
prefix = "$WORK/$name"
database = "off"
declarative_config = "$WORK/$name.yml"
$settings
stream_listen = "127.0.0.1:$p, 127.0.0.1:$((p + 1)) ssl, 127.0.0.1:$((p + 2)) ssl, 127.0.0.1:$((p + 3))"
admin_listen = "127.0.0.1:$((p + 4))"
proxy_stream_access_log = "off"
worker_threads = 1
log_level = "warn"
ssl_session_tickets = "off"
ssl_session_cache_size = "off"
EOF
  # mimalloc asks for transparent huge pages for its arena: RSS would then
  # grow in 2 MiB steps (up to 466 bytes per session at 6,000 idle
  # sessions, depending on where a step falls). nginx and HAProxy (glibc)
  # get none; neither does Strait here.
  MIMALLOC_ALLOW_THP=0 $PROXYCPU "$STRAIT" start -c "$WORK/$name.toml" >"$WORK/$name.out" 2>&1 &
  echo $! >> "$WORK/pids"
  echo $!
}

# --- Measuring ---------------------------------------------------------------
CSV="$RESULTS/latest.csv"
echo "proxy,scenario,run,value,unit,proxy_cpu,cpu_unit" > "$CSV"
record() { echo "$1,$2,$3,$4,$5,$6,$7" >> "$CSV"; }

# Runs "$@" (a load command printing key=value) and prints it plus the
# proxy's CPU ticks spent meanwhile.
measure() {
  local pid=$1; shift
  local before after out
  before=$( [ "$pid" = 0 ] && echo 0 || cpu_ticks "$pid")
  out=$($LOAD "$@")
  after=$( [ "$pid" = 0 ] && echo 0 || cpu_ticks "$pid")
  echo "$out cpu_s=$(awk -v a="$after" -v b="$before" -v t="$TCK" 'BEGIN {printf "%.3f", (a - b) / t}')"
}
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }

# Where proxy $1 (listening from port $2) takes each kind of session.
endpoints() {
  plain=127.0.0.1:$2 tls=127.0.0.1:$(($2 + 1)) pass=127.0.0.1:$(($2 + 2)) ip=$(($2 + 3))
  if [ "$1" = direct ]; then tls=""; pass=127.0.0.1:$TLSECHO; ip=$IPERF; fi
}

# Correctness first: no numbers for a proxy that does not proxy right.
check_proxy() {
  local name=$1 plain tls pass ip
  endpoints "$name" "$2"
  local ok=1
  "$GEN" check --to "$plain" >/dev/null || ok=0
  if [ -n "$tls" ]; then "$GEN" check --to "$tls" --sni bench.test --ca "$WORK/certs/ca.pem" >/dev/null || ok=0; fi
  "$GEN" check --to "$pass" --sni pt.test --ca "$WORK/certs/ca.pem" >/dev/null || ok=0
  if [ "$name" != direct ]; then
    "$GEN" check --to "$pass" --sni nobody.test --ca "$WORK/certs/ca.pem" --refused >/dev/null || ok=0
  fi
  if [ $ok = 0 ]; then echo "$name: correctness check FAILED: no numbers" >&2; record "$name" check 1 fail "" "" ""; return 1; fi
}

# One run of every scenario through proxy $1 (port $2, process $3), as run $4.
measure_run() {
  local name=$1 pid=$3 run=$4 plain tls pass ip
  endpoints "$name" "$2"
  local o
  o=$(measure "$pid" iperf3 -c 127.0.0.1 -p "$ip" -t "$IPERF_SECS" -J)
  local bps bytes cpu
  read -r bps bytes < <(echo "$o" | python3 -c '
import json, sys
t = sys.stdin.read()
d = json.loads(t[:t.rindex("}") + 1])
r = d.get("end", {}).get("sum_received")
print(r["bits_per_second"], r["bytes"]) if r else print(0, 0)')
  cpu=$(echo "$o" | sed -n 's/.*cpu_s=\([0-9.]*\).*/\1/p' | tail -1)
  if [ "$bytes" = 0 ]; then
    echo "$name: iperf3 failed: $(echo "$o" | grep -m1 '"error"')" >&2
    record "$name" throughput "$run" fail Gbit/s "" ""
  else
    record "$name" throughput "$run" "$(awk -v b="$bps" 'BEGIN {printf "%.2f", b / 1e9}')" Gbit/s \
      "$(awk -v c="$cpu" -v y="$bytes" 'BEGIN {printf "%.3f", c / (y / 1073741824)}')" "cpu-s/GiB"
  fi

  o=$(measure "$pid" "$GEN" rate --to "$plain" --conc 32 --secs "$SECS")
  record "$name" new_sessions "$run" "$(field "$o" rate)" sessions/s \
    "$(awk -v c="$(field "$o" cpu_s)" -v n="$(field "$o" sessions)" 'BEGIN {printf "%.1f", c * 1e6 / n}')" "us/session"

  for c in 1 32; do
    o=$(measure "$pid" "$GEN" latency --to "$plain" --conns $c --secs "$SECS")
    record "$name" "p99_latency_${c}conn" "$run" "$(field "$o" p99_us)" us \
      "$(awk -v c="$(field "$o" cpu_s)" -v n="$(field "$o" requests)" 'BEGIN {printf "%.2f", c * 1e6 / n}')" "us/request"
    record "$name" "p50_latency_${c}conn" "$run" "$(field "$o" p50_us)" us "" ""
  done

  if [ -n "$tls" ]; then
    o=$(measure "$pid" "$GEN" rate --to "$tls" --conc 32 --secs "$SECS" --sni bench.test --ca "$WORK/certs/ca.pem")
    record "$name" tls_handshakes "$run" "$(field "$o" rate)" handshakes/s \
      "$(awk -v c="$(field "$o" cpu_s)" -v n="$(field "$o" sessions)" 'BEGIN {printf "%.1f", c * 1e6 / n}')" "us/handshake"
  fi
  o=$(measure "$pid" "$GEN" rate --to "$pass" --conc 32 --secs "$SECS" --sni pt.test --ca "$WORK/certs/ca.pem")
  record "$name" passthrough "$run" "$(field "$o" rate)" sessions/s \
    "$(awk -v c="$(field "$o" cpu_s)" -v n="$(field "$o" sessions)" 'BEGIN {printf "%.1f", c * 1e6 / n}')" "us/session"
}

# Memory per idle session, each measurement in a fresh proxy process (memory
# freed by an earlier test would hide the cost of a later one). Two figures:
# the RSS added by all IDLE sessions divided by IDLE, and the RSS added by the
# last three quarters of them divided by their number (the marginal cost,
# free of whatever the first sessions' warm-up left behind).
idle_rss() {
  local name=$1 p=$2
  local mark=$((IDLE / 4))
  for run in 1 2; do
    for bytes in 64 16384; do
      local pid base mid after fifo gen
      pid=$("start_$name" "$p")
      wait_port "$p" || { echo "$name did not start" >&2; return; }
      sleep 0.3
      base=$(rss_kb "$pid")
      fifo="$WORK/idle.in"; rm -f "$fifo"; mkfifo "$fifo"
      : > "$WORK/idle.out"
      $LOAD "$GEN" idle --to "127.0.0.1:$p" --conns "$IDLE" --bytes $bytes --mark $mark < "$fifo" > "$WORK/idle.out" &
      gen=$!
      exec 9>"$fifo"
      for _ in $(seq 1 600); do grep -q mark "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
      sleep 0.5
      mid=$(rss_kb "$pid")
      # In a subshell: if the generator died, the write's SIGPIPE ends only that.
      (echo go >&9) 2>/dev/null || true
      for _ in $(seq 1 600); do grep -q ready "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
      sleep 0.5
      after=$(rss_kb "$pid")
      exec 9>&-
      wait $gen || true
      stop_pid "$pid"
      if ! grep -q ready "$WORK/idle.out"; then
        echo "$name: the idle sessions did not all open; no idle figures for this run" >&2
        continue
      fi
      record "$name" "idle_rss_after_${bytes}B" "$run" \
        "$(awk -v a="$after" -v b="$base" -v n="$IDLE" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')" bytes/session "" ""
      record "$name" "idle_rss_marginal_${bytes}B" "$run" \
        "$(awk -v a="$after" -v b="$mid" -v n="$((IDLE - mark))" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')" bytes/session "" ""
    done
  done
}

# All proxies run at once, idle but for the one being measured, and the runs
# alternate between them, in opposite orders: a machine that gets slower or
# noisier during the benchmark then weighs on every proxy, not on the last
# one measured.
declare -A PORT PID
PORT[direct]=$ECHO; PID[direct]=0
P=19100
STRAITS=(strait strait_native strait_wasm)
for proxy in nginx haproxy "${STRAITS[@]}"; do
  PORT[$proxy]=$P
  PID[$proxy]=$("start_$proxy" $P)
  P=$((P + 10))
done
names=()
for proxy in direct nginx haproxy "${STRAITS[@]}"; do
  if [ "$proxy" != direct ]; then
    p=${PORT[$proxy]}
    wait_port "$p" && wait_port $((p + 3)) || { echo "$proxy did not start" >&2; record "$proxy" start 1 fail "" "" ""; continue; }
  fi
  sleep 0.3
  check_proxy "$proxy" "${PORT[$proxy]}" && names+=("$proxy")
done
for run in 1 2; do
  order=("${names[@]}")
  # The second run goes the other way: no proxy is always measured last.
  if [ $run = 2 ]; then mapfile -t order < <(printf '%s\n' "${names[@]}" | tac); fi
  for proxy in "${order[@]}"; do
    measure_run "$proxy" "${PORT[$proxy]}" "${PID[$proxy]}" "$run"
  done
done

if [ $QUICK = 0 ] && [[ " ${names[*]} " == *" strait "* ]]; then
  # Strait alone: apply 10,000 routes while sessions flow; none may fail.
  SP=${PORT[strait]}
  python3 - "$WORK/big.json" $ECHO $SP <<'PY'
import json, sys
out, echo, p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
routes = [{"protocols": ["tcp"], "destinations": [{"ip": f"10.{i // 250}.{i % 250}.1", "port": 1000 + i % 50000}]} for i in range(10000)]
routes.append({"protocols": ["tcp"], "destinations": [{"port": p}]})
print(json.dumps({"_format_version": "3.0", "services": [{"url": f"tcp://127.0.0.1:{echo}", "routes": routes}]}), file=open(out, "w"))
PY
  $LOAD "$GEN" rate --to 127.0.0.1:$SP --conc 8 --secs 6 > "$WORK/during.out" &
  rg=$!
  sleep 1
  read -r code t < <(curl -s -o "$WORK/apply.out" -w '%{http_code} %{time_total}\n' -X POST \
    -H 'content-type: application/json' --data-binary @"$WORK/big.json" http://127.0.0.1:$((SP + 4))/config)
  wait $rg
  if [ "$code" = 201 ]; then
    record strait apply_10k_routes 1 "$t" s "$(field "$(cat "$WORK/during.out")" errors)" "failed sessions"
  else
    echo "applying 10,000 routes failed: $code $(head -c 300 "$WORK/apply.out")" >&2
    record strait apply_10k_routes 1 fail s "" ""
  fi
fi
for proxy in nginx haproxy "${STRAITS[@]}"; do stop_pid "${PID[$proxy]}"; done

for proxy in nginx haproxy "${STRAITS[@]}"; do
  idle_rss "$proxy" $P
  P=$((P + 10))
done

# --- Report ------------------------------------------------------------------
python3 - "$CSV" "$RESULTS/latest.md" "$QUICK" <<'PY'
import csv, sys, platform, os, subprocess
rows = list(csv.DictReader(open(sys.argv[1])))
out = open(sys.argv[2], "w")
proxies = ["direct", "nginx", "haproxy", "strait", "strait_native", "strait_wasm"]
scen = []
for r in rows:
    if r["scenario"] not in scen and r["scenario"] not in ("check", "start"):
        scen.append(r["scenario"])
def cell(p, s, key):
    vals = [r[key] for r in rows if r["proxy"] == p and r["scenario"] == s and r[key]]
    return " / ".join(vals) if vals else "-"
def mean(p, s, key):
    vals = [float(r[key]) for r in rows if r["proxy"] == p and r["scenario"] == s and r[key] not in ("", "fail")]
    return sum(vals) / len(vals) if vals else None
lower_better = lambda s: s.startswith(("p99", "p50", "idle", "apply"))
cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": ") if os.path.exists("/proc/cpuinfo") else "?"
lines = [f"Machine: {cpu}, {os.cpu_count()} CPUs, {platform.platform()}; quick={sys.argv[3]}", "",
         "Two runs per cell (`run1 / run2`). Proxy CPU is the proxy's own user+system time per unit of work.",
         "Ratio: Strait's mean against the better of nginx and HAProxy (< 1 is better for CPU, latency and memory; > 1 for rates).",
         "strait_native and strait_wasm: Strait with a pass-through data phase on every route (the example plugin with count_bytes; a proxy-wasm filter);",
         "native/s and wasm/s are their means against plain Strait's.", "",
         "| scenario | unit | " + " | ".join(proxies) + " | strait/best | native/s | wasm/s |", "|---" * (len(proxies) + 5) + "|"]
def against(s, key, variant):
    base, v = mean("strait", s, key), mean(variant, s, key)
    return f"{v / base:.2f}" if base and v else "-"
for s in scen:
    unit = next(r["unit"] for r in rows if r["scenario"] == s)
    best = [m for m in (mean("nginx", s, "value"), mean("haproxy", s, "value")) if m is not None]
    st = mean("strait", s, "value")
    ratio = "-"
    if best and st:
        b = min(best) if lower_better(s) else max(best)
        ratio = f"{st / b:.2f}" if b else "-"
    lines.append(f"| {s} | {unit} | " + " | ".join(cell(p, s, "value") for p in proxies) + f" | {ratio} | {against(s, 'value', 'strait_native')} | {against(s, 'value', 'strait_wasm')} |")
    cu = next((r["cpu_unit"] for r in rows if r["scenario"] == s and r["cpu_unit"]), "")
    if cu:
        best = [m for m in (mean("nginx", s, "proxy_cpu"), mean("haproxy", s, "proxy_cpu")) if m is not None]
        st = mean("strait", s, "proxy_cpu")
        ratio = f"{st / min(best):.2f}" if best and st and min(best) else "-"
        lines.append(f"| ↳ proxy CPU | {cu} | " + " | ".join(cell(p, s, "proxy_cpu") for p in proxies) + f" | {ratio} | {against(s, 'proxy_cpu', 'strait_native')} | {against(s, 'proxy_cpu', 'strait_wasm')} |")
fails = [r["proxy"] for r in rows if r["value"] == "fail"]
if fails:
    lines += ["", "Refused to measure (failed a correctness check or did not start): " + ", ".join(sorted(set(fails)))]
text = "\n".join(lines) + "\n"
out.write(text)
print(text)
PY

# Micro-benchmarks, on the proxy's core: the router and the ClientHello parser.
echo "Micro-benchmarks (ns per operation):"
$PROXYCPU "$GEN" micro --iters $([ $QUICK = 1 ] && echo 500000 || echo 2000000) | tee "$RESULTS/micro.txt"
