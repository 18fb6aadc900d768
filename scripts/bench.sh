#!/usr/bin/env bash
# The benchmark: prints tagbridge's performance figures next to their
# targets. Why this exists: the targets (latency close to a bare Consul
# txn, cheap rejections, small memory and binary) are promises that only a
# real run against a real Consul can check, and nobody should have to
# assemble that run by hand. It prints figures; it never fails on a time.
#
# Installs what it needs (wrk, curl, openssl, the pinned Consul), builds
# the release binary and the `latency` bench, starts a Consul dev agent and
# tagbridge on free loopback ports, then measures:
#   1. resident memory when idle (after startup and a few requests);
#   2. webhook -> 2xx latency against a bare Consul txn of the same shape,
#      at history_keep 10, 100 and 10000, each history first filled to its
#      steady size, and GET /healthz on the same TLS connection (the hop
#      every webhook pays before any work) (benches/latency.rs);
#   3. rejected-request throughput over TLS keep-alive with wrk, with the
#      default configuration (info logging, failed-attempt limit on),
#      sampling resident memory meanwhile; then a short run of the 404 path
#      alone (limit lifted, warn);
#   4. the stripped release binary's size;
#   5. resident memory with 1000 idle TLS connections held (python3).
# Everything listens on and talks to 127.0.0.1 only, and every process it
# starts is stopped on exit.
#
# Knobs (environment): BENCH_N (webhooks and txns measured, default 2000),
# BENCH_WARMUP (default 200), BENCH_WRK_SECONDS (default 10),
# BENCH_SHORT_SECONDS (the 429 and info-logging runs, default 3).
# Profiling is optional and not run here: wrap the serve command in
# `valgrind --tool=callgrind` by hand to see where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

N=${BENCH_N:-2000}
WARMUP=${BENCH_WARMUP:-200}
WRK_SECONDS=${BENCH_WRK_SECONDS:-10}
SHORT_SECONDS=${BENCH_SHORT_SECONDS:-3}

need curl curl
need openssl openssl
need wrk wrk

eval "$(bash scripts/install-agents.sh consul)"
export CONSUL_BIN

echo "== building tagbridge (release) and the latency bench"
cargo build --release --quiet
cargo bench --bench latency --no-run --quiet
# Where cargo put it (CARGO_TARGET_DIR, when set, moves target/).
TB=${CARGO_TARGET_DIR:-$PWD/target}/release/tagbridge

work=$(mktemp -d /tmp/tagbridge-bench.XXXXXX)
pids=()
sampler=""

# stop PID: SIGTERM, up to 5 s to exit, then SIGKILL.
stop() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  [ -n "$sampler" ] && stop "$sampler"
  for p in "${pids[@]}"; do stop "$p"; done
  if [ "$rc" != 0 ] && [ -f "$work/tagbridge.log" ]; then
    echo "-- last lines of the tagbridge log:" >&2
    tail -n 20 "$work/tagbridge.log" >&2 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# start_sampler PID FILE SECONDS: VmRSS (KiB) every 200 ms into FILE, in
# the background, for at most SECONDS.
start_sampler() {
  local pid=$1 file=$2 max=$(($3 * 5))
  : >"$file"
  (
    for ((i = 0; i < max; i++)); do
      awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" >>"$file" 2>/dev/null || exit 0
      sleep 0.2
    done
  ) &
  sampler=$!
}
stop_sampler() {
  stop "$sampler"
  sampler=""
}
max_of() { sort -n "$1" | tail -n 1; }
# cpu_ticks PID: user + system CPU time of PID, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# per_op TICKS OPS: CPU microseconds per operation.
per_op() { awk -v t="$1" -v n="$2" -v hz="$TICK" 'BEGIN {printf "%.0f", n ? t * 1e6 / hz / n : 0}'; }
# hist ADMIN_PORT sum|count: tagbridge's server-side webhook timer.
hist() {
  curl -fsS "http://127.0.0.1:$1/metrics" |
    awk -v m="tagbridge_ingest_duration_seconds_$2" '$1 == m {print $2}'
}

# A counter from tagbridge's metrics: metric ADMIN_PORT OUTCOME.
metric() {
  curl -fsS "http://127.0.0.1:$1/metrics" |
    awk -v o="outcome=\"$2\"" '/^tagbridge_webhooks_total/ && index($0, o) {s += $NF} END {print s + 0}'
}

echo "== machine: $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "== starting consul $("$CONSUL_BIN" version | head -1 | awk '{print $2}') (dev mode, loopback)"
start_consul "$work"
pids+=("$CONSUL_PID")
export CONSUL_HTTP_ADDR="http://127.0.0.1:$CONSUL_PORT"

# A CA and a leaf it signs. lib.sh's self_signed_cert makes one certificate
# that is its own CA (CA:TRUE), which curl accepts but rustls (the latency
# bench's client) refuses as an end-entity certificate.
bench_cert() {
  local d=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=tagbridge bench CA" -keyout "$d/ca.key" -out "$d/ca.crt" >/dev/null 2>&1
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$d/tls.key" -out "$d/tls.csr" >/dev/null 2>&1
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/leaf.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/leaf.ext" -out "$d/tls.crt" >/dev/null 2>&1
}
bench_cert "$work"
secret_out=$("$TB" secret)
secret=$(printf '%s\n' "$secret_out" | sed -n 's#^/hooks/##p')
hash_line=$(printf '%s\n' "$secret_out" | grep '^secret_sha256')
signing_key=bench-signing-key
printf '%s' "$signing_key" >"$work/web.hmac"

# write_config FILE PORT ADMIN_PORT EXTRA [HISTORY_KEEP]: one generic service.
write_config() {
  cat >"$1" <<HCL
listen       = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
$4

tls {
  cert_file = "$work/tls.crt"
  key_file  = "$work/tls.key"
}

consul {
  address = "http://127.0.0.1:$CONSUL_PORT"
}

service "web" {
  $hash_line
  source              = "generic"
  repository          = "acme/web"
  key                 = "configs/web/IMAGE_TAG"
  signing_secret_file = "$work/web.hmac"
  history_keep        = ${5:-100}
  tags {
    include = "^[0-9]+\$"
    order   = "numeric"
  }
}
HCL
}

# start_tagbridge NAME CONFIG LOG_LEVEL: sets TB_PID.
start_tagbridge() {
  TAGBRIDGE_LOG=$3 TAGBRIDGE_CONFIG=$2 "$TB" serve 2>"$work/$1.log" &
  TB_PID=$!
  pids+=("$TB_PID")
}

# run_wrk PORT SECONDS OUT: rejected POSTs over TLS keep-alive.
cat >"$work/reject.lua" <<'LUA'
-- A plausible webhook to a wrong secret: answered 404 (or 429 once limited).
wrk.method = "POST"
wrk.body = '{"repository":"acme/web","tag":"1"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Hub-Signature-256"] = "sha256=00"
LUA
run_wrk() {
  wrk -t2 -c64 -d"$2"s --timeout 5s -s "$work/reject.lua" \
    "https://127.0.0.1:$1/hooks/not-the-secret-0123456789abcdef" >"$3" 2>&1
}
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }

port=$(free_port)
admin=$(free_port)
# The limit is lifted so the throughput run measures the 404 path, not 429.
write_config "$work/tagbridge.hcl" "$port" "$admin" "failed_attempts_per_minute = 1000000000"
"$TB" check --config "$work/tagbridge.hcl" >/dev/null
echo "== starting tagbridge (TAGBRIDGE_LOG=warn; the default level is info)"
start_tagbridge tagbridge "$work/tagbridge.hcl" warn
main_pid=$TB_PID
wait_http "http://127.0.0.1:$admin/readyz" 30

# ---------------------------------------------------------------- 1. idle
echo
echo "== 1. idle resident memory"
# HTTP/1.1 like registries and wrk (curl over h2 reports a stream error when
# a rejection is answered before its POST body is read).
for i in 1 2 3 4 5; do
  curl -sS --http1.1 -o /dev/null --cacert "$work/ca.crt" -X POST -d '{}' \
    "https://127.0.0.1:$port/hooks/wrong-$i"
done
body='{"repository":"acme/web","tag":"1"}'
sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$signing_key" -r | cut -d' ' -f1)
first=$(curl -sS --http1.1 -o /dev/null -w '%{http_code}' --cacert "$work/ca.crt" -X POST \
  -H "Content-Type: application/json" -H "X-Hub-Signature-256: sha256=$sig" \
  --data-binary "$body" "https://127.0.0.1:$port/hooks/$secret")
echo "5 rejected requests and one signed webhook (HTTP $first), then 1 s idle"
# Does a rejected POST keep its connection? (curl reuses it only if so.)
if curl -sS --http1.1 -v -o /dev/null -o /dev/null --cacert "$work/ca.crt" -X POST -d '{}' \
  "https://127.0.0.1:$port/hooks/wrong-a" "https://127.0.0.1:$port/hooks/wrong-b" 2>&1 |
  grep -q 'Re-using existing connection'; then
  keepalive=yes
else
  keepalive=no
fi
echo "connection kept alive after a rejected POST: $keepalive"
sleep 1
idle_kib=$(rss_kib "$main_pid")
echo "VmRSS idle: $(mib "$idle_kib") MiB ($(awk '/^Rss(Anon|File|Shmem):/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' "/proc/$main_pid/status"))"

# ------------------------------------------------------------- 2. latency
# At history_keep 10, 100 and 10000, each on a tagbridge of its own (the
# first one is the main instance, history_keep 100); the history is one key
# per entry, so the figures should not depend on the size.
declare -A L_P50 L_P99 T_P50 H_P50 RATIO
latency_ok=1
for keep in 100 10 10000; do
  echo
  echo "== 2. webhook latency vs a bare Consul txn at history_keep=$keep (cargo bench --bench latency)"
  if [ "$keep" = 100 ]; then
    lport=$port
    ladmin=$admin
    lpid=$main_pid
  else
    lport=$(free_port)
    ladmin=$(free_port)
    write_config "$work/keep$keep.hcl" "$lport" "$ladmin" "failed_attempts_per_minute = 1000000000" "$keep"
    # Its own state prefix, so the sizes do not share one history.
    sed -i "s#^admin_listen.*#&\nstate_prefix = \"bench$keep\"#" "$work/keep$keep.hcl"
    start_tagbridge "keep$keep" "$work/keep$keep.hcl" warn
    lpid=$TB_PID
    wait_http "http://127.0.0.1:$ladmin/readyz" 30
  fi
  start_sampler "$lpid" "$work/rss-latency" 600
  cpu_before=$(cpu_ticks "$lpid")
  h_sum_before=$(hist "$ladmin" sum)
  h_count_before=$(hist "$ladmin" count)
  prefix=tagbridge
  [ "$keep" = 100 ] || prefix=bench$keep
  if ! cargo bench --quiet --bench latency -- \
    --url "https://127.0.0.1:$lport" --secret "$secret" \
    --signing-key-file "$work/web.hmac" --ca "$work/ca.crt" \
    --consul "http://127.0.0.1:$CONSUL_PORT" --n "$N" --warmup "$WARMUP" --history-keep "$keep" \
    --state-prefix "$prefix" |
    tee "$work/latency.out"; then
    latency_ok=0
    echo "latency bench failed: its figures are not valid" >&2
  fi
  stop_sampler
  cpu_latency=$(($(cpu_ticks "$lpid") - cpu_before))
  server_mean=$(awk -v s0="$h_sum_before" -v c0="$h_count_before" -v s1="$(hist "$ladmin" sum)" -v c1="$(hist "$ladmin" count)" \
    'BEGIN {printf "%.3f", (c1 > c0) ? (s1 - s0) * 1000 / (c1 - c0) : 0}')
  echo "tagbridge's own timer (request in -> answer out, mean over the run): $server_mean ms"
  hooks_sent=$((N + (WARMUP > keep ? WARMUP : keep + 1)))
  echo "tagbridge CPU per webhook: $(per_op "$cpu_latency" "$hooks_sent") us (user+system over the run, $N GET /healthz included, clock tick $((1000 / TICK)) ms)"
  latency_peak_kib=$(max_of "$work/rss-latency")
  echo "VmRSS peak during the latency run: $(mib "${latency_peak_kib:-0}") MiB"
  result() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" "$work/latency.out" | head -n 1; }
  L_P50[$keep]=$(result webhook_p50_ms)
  L_P99[$keep]=$(result webhook_p99_ms)
  T_P50[$keep]=$(result txn_p50_ms)
  H_P50[$keep]=$(result healthz_p50_ms)
  RATIO[$keep]=$(result ratio_p50)
  [ "$keep" = 100 ] || stop "$lpid"
done

# ---------------------------------------------------------- 3. rejections
# The headline run uses the default configuration, as an operator runs it:
# log level info, the failed-attempt limit on (wrk's one address is soon
# answered 429). Rejections are summarised in the log, not one line each.
echo
echo "== 3. rejected requests over TLS keep-alive, default configuration (wrk -t2 -c64 -d${WRK_SECONDS}s, wrong secret)"
echo "(wrk shares the $(nproc) cores with tagbridge and Consul)"
port3=$(free_port)
admin3=$(free_port)
write_config "$work/default.hcl" "$port3" "$admin3" ""
start_tagbridge default "$work/default.hcl" info
default_pid=$TB_PID
wait_http "http://127.0.0.1:$admin3/readyz" 30
nf_before=$(metric "$admin3" not_found)
rl_before=$(metric "$admin3" rate_limited)
start_sampler "$default_pid" "$work/rss-load" $((WRK_SECONDS + 10))
cpu_before=$(cpu_ticks "$default_pid")
run_wrk "$port3" "$WRK_SECONDS" "$work/wrk.out"
cpu_wrk=$(($(cpu_ticks "$default_pid") - cpu_before))
stop_sampler
cat "$work/wrk.out"
rps=$(wrk_rps "$work/wrk.out")
nf=$(($(metric "$admin3" not_found) - nf_before))
rl=$(($(metric "$admin3" rate_limited) - rl_before))
load_peak_kib=$(max_of "$work/rss-load")
hwm_kib=$(hwm_kib "$default_pid")
after_kib=$(rss_kib "$default_pid")
log_lines=$(wc -l <"$work/default.log")
echo "tagbridge counted: $nf not_found (404), $rl rate_limited (429)"
echo "tagbridge CPU: $(awk -v t="$cpu_wrk" -v hz="$TICK" -v d="$WRK_SECONDS" 'BEGIN {printf "%.2f", t / hz / d}') cores busy, $(per_op "$cpu_wrk" $((nf + rl))) us per rejection"
echo "log at info: $log_lines lines, $(($(stat -c %s "$work/default.log") / 1024)) KiB for $((nf + rl)) rejections"
echo "VmRSS peak under load (200 ms samples): $(mib "$load_peak_kib") MiB; VmHWM: $(mib "$hwm_kib") MiB; after: $(mib "$after_kib") MiB"
stop "$default_pid"

echo
echo "== 3b. the 404 path alone: failed-attempt limit lifted, log level warn, ${SHORT_SECONDS}s"
run_wrk "$port" "$SHORT_SECONDS" "$work/wrk-404.out"
rps_404=$(wrk_rps "$work/wrk-404.out")
echo "Requests/sec: $rps_404"

# ------------------------------------------------------- 5. idle clients
echo
echo "== 5. resident memory with 1000 idle TLS connections held"
echo "(each from its own 127.0.x.y address, one request answered, then silent)"
before_kib=$(rss_kib "$main_pid")
python3 - "$port" "$work/ca.crt" "$main_pid" >"$work/idle.out" <<'PY' &
import socket, ssl, sys, time
port, ca, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
held = []
for i in range(1000):
    src = "127.0.%d.%d" % (2 + i // 250, 1 + i % 250)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    s.recv(4096)
    held.append(s)
rss = [l.split()[1] for l in open("/proc/%s/status" % pid) if l.startswith("VmRSS:")][0]
open_now = 0
for s in held:
    s.setblocking(False)
    try:
        open_now += 0 if s.recv(1) == b"" else 1
    except (ssl.SSLWantReadError, BlockingIOError):
        open_now += 1
    except OSError:
        pass
print("held=%d open=%d rss_kib=%s" % (len(held), open_now, rss))
PY
idle_py=$!
wait "$idle_py" || echo "idle-connection client failed" >&2
cat "$work/idle.out"
idle1000_kib=$(sed -n 's/.*rss_kib=\([0-9]*\).*/\1/p' "$work/idle.out")
echo "VmRSS before: $(mib "$before_kib") MiB; with 1000 idle connections: $(mib "${idle1000_kib:-0}") MiB"

# ------------------------------------------------------------ 4. binary
echo
echo "== 4. binary size"
bin_bytes=$(stat -c %s "$TB")
bin_mib=$(awk -v b="$bin_bytes" 'BEGIN {printf "%.2f", b / 1048576}')
echo "target/release/tagbridge: $bin_bytes bytes ($bin_mib MiB, stripped by the release profile)"

# ------------------------------------------------------------- summary
# verdict VALUE OP LIMIT: PASS or MISS (n/a when there is no figure).
verdict() {
  [ -n "$1" ] || { echo "n/a"; return; }
  awk -v v="$1" -v op="$2" -v l="$3" \
    'BEGIN { ok = (op == "<=") ? (v + 0 <= l + 0) : (v + 0 >= l + 0); print ok ? "PASS" : "MISS" }'
}
row() { printf '%-44s %14s  %-12s %s\n' "$1" "$2" "$3 $4" "$(verdict "$5" "$3" "$4")"; }
[ "$latency_ok" = 1 ] || { L_P99=(); RATIO=(); }
idle_mib=$(mib "$idle_kib")
load_mib=$(mib "$load_peak_kib")
echo
echo "== summary ($(nproc) cores; latency runs at TAGBRIDGE_LOG=warn, the rejection run at the default info)"
printf '%-44s %14s  %-12s %s\n' figure measured target result
for keep in 10 100 10000; do
  row "history_keep=$keep: p50 ratio (${L_P50[$keep]:-?} / ${T_P50[$keep]:-?} ms)" "${RATIO[$keep]:-n/a}" "<=" 1.3 "${RATIO[$keep]}"
  row "history_keep=$keep: webhook p99 (ms)" "${L_P99[$keep]:-n/a}" "<=" 5 "${L_P99[$keep]}"
done
row "rejections/s, default config (info, limit on)" "$rps" ">=" 60000 "$rps"
row "resident memory idle (MiB)" "$idle_mib" "<=" 10 "$idle_mib"
row "resident memory under load, peak (MiB)" "$load_mib" "<=" 25 "$load_mib"
row "stripped release binary (MiB)" "$bin_mib" "<=" 10 "$bin_mib"
echo
echo "for information: 404 path alone (limit lifted, warn) ${rps_404:-?} req/s; log at info during the default run: ${log_lines:-?} lines;"
echo "HTTPS hop with no work behind it (GET /healthz p50) at history_keep 10 / 100 / 10000: ${H_P50[10]:-?} / ${H_P50[100]:-?} / ${H_P50[10000]:-?} ms;"
echo "resident memory with 1000 idle TLS connections: $(mib "${idle1000_kib:-0}") MiB;"
echo "VmHWM $(mib "$hwm_kib") MiB; peak during the latency run $(mib "${latency_peak_kib:-0}") MiB; keep-alive after a rejection: $keepalive"
[ "$latency_ok" = 1 ] || echo "the latency bench failed: see its output above"
