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
#   2. webhook -> 2xx latency against a bare Consul txn of the same shape
#      (benches/latency.rs);
#   3. rejected-request throughput over TLS keep-alive with wrk (the 404
#      path), sampling resident memory meanwhile; then short runs showing
#      the 429 path (default failed-attempt limit) and info logging;
#   4. the stripped release binary's size.
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
TB=$PWD/target/release/tagbridge

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

# write_config FILE PORT ADMIN_PORT EXTRA: one generic service.
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
echo
echo "== 2. webhook latency vs a bare Consul txn (cargo bench --bench latency)"
start_sampler "$main_pid" "$work/rss-latency" 600
cpu_before=$(cpu_ticks "$main_pid")
h_sum_before=$(hist "$admin" sum)
h_count_before=$(hist "$admin" count)
latency_ok=1
if ! cargo bench --quiet --bench latency -- \
  --url "https://127.0.0.1:$port" --secret "$secret" \
  --signing-key-file "$work/web.hmac" --ca "$work/ca.crt" \
  --consul "http://127.0.0.1:$CONSUL_PORT" --n "$N" --warmup "$WARMUP" |
  tee "$work/latency.out"; then
  latency_ok=0
  echo "latency bench failed: its figures are not valid" >&2
fi
stop_sampler
cpu_latency=$(($(cpu_ticks "$main_pid") - cpu_before))
server_mean=$(awk -v s0="$h_sum_before" -v c0="$h_count_before" -v s1="$(hist "$admin" sum)" -v c1="$(hist "$admin" count)" \
  'BEGIN {printf "%.3f", (c1 > c0) ? (s1 - s0) * 1000 / (c1 - c0) : 0}')
echo "tagbridge's own timer (request in -> answer out, mean over the run): $server_mean ms"
echo "tagbridge CPU per webhook: $(per_op "$cpu_latency" $((N + WARMUP))) us (user+system over the run, clock tick $((1000 / TICK)) ms)"
latency_peak_kib=$(max_of "$work/rss-latency")
echo "VmRSS peak during the latency run: $(mib "${latency_peak_kib:-0}") MiB"
result() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" "$work/latency.out" | head -n 1; }
w_p50=$(result webhook_p50_ms)
w_p99=$(result webhook_p99_ms)
t_p50=$(result txn_p50_ms)
ratio=$(result ratio_p50)

# ---------------------------------------------------------- 3. rejections
echo
echo "== 3. rejected requests over TLS keep-alive (wrk -t2 -c64 -d${WRK_SECONDS}s, wrong secret)"
echo "(wrk shares the $(nproc) cores with tagbridge and Consul)"
nf_before=$(metric "$admin" not_found)
rl_before=$(metric "$admin" rate_limited)
start_sampler "$main_pid" "$work/rss-load" $((WRK_SECONDS + 10))
cpu_before=$(cpu_ticks "$main_pid")
run_wrk "$port" "$WRK_SECONDS" "$work/wrk.out"
cpu_wrk=$(($(cpu_ticks "$main_pid") - cpu_before))
stop_sampler
cat "$work/wrk.out"
rps=$(wrk_rps "$work/wrk.out")
nf=$(($(metric "$admin" not_found) - nf_before))
rl=$(($(metric "$admin" rate_limited) - rl_before))
load_peak_kib=$(max_of "$work/rss-load")
hwm_kib=$(hwm_kib "$main_pid")
after_kib=$(rss_kib "$main_pid")
echo "tagbridge counted: $nf not_found (404), $rl rate_limited (429)"
echo "tagbridge CPU: $(awk -v t="$cpu_wrk" -v hz="$TICK" -v d="$WRK_SECONDS" 'BEGIN {printf "%.2f", t / hz / d}') cores busy, $(per_op "$cpu_wrk" "$nf") us per rejection"
echo "VmRSS peak under load (200 ms samples): $(mib "$load_peak_kib") MiB; VmHWM: $(mib "$hwm_kib") MiB; after: $(mib "$after_kib") MiB"

echo
echo "== 3b. the 429 path: default failed_attempts_per_minute, ${SHORT_SECONDS}s"
port2=$(free_port)
admin2=$(free_port)
write_config "$work/limited.hcl" "$port2" "$admin2" ""
start_tagbridge limited "$work/limited.hcl" warn
limited_pid=$TB_PID
wait_http "http://127.0.0.1:$admin2/readyz" 30
run_wrk "$port2" "$SHORT_SECONDS" "$work/wrk-limited.out"
rps_limited=$(wrk_rps "$work/wrk-limited.out")
echo "Requests/sec: $rps_limited ($(metric "$admin2" not_found) x 404, $(metric "$admin2" rate_limited) x 429)"
stop "$limited_pid"

echo
echo "== 3c. the 404 path with the default log level (info: one line per request), ${SHORT_SECONDS}s"
port3=$(free_port)
admin3=$(free_port)
write_config "$work/info.hcl" "$port3" "$admin3" "failed_attempts_per_minute = 1000000000"
start_tagbridge info "$work/info.hcl" info
info_pid=$TB_PID
wait_http "http://127.0.0.1:$admin3/readyz" 30
run_wrk "$port3" "$SHORT_SECONDS" "$work/wrk-info.out"
rps_info=$(wrk_rps "$work/wrk-info.out")
echo "Requests/sec: $rps_info (log: $(wc -l <"$work/info.log") lines, $(($(stat -c %s "$work/info.log") / 1024)) KiB)"
stop "$info_pid"

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
[ "$latency_ok" = 1 ] || { w_p50=""; w_p99=""; ratio=""; }
idle_mib=$(mib "$idle_kib")
load_mib=$(mib "$load_peak_kib")
echo
echo "== summary ($(nproc) cores; tagbridge at TAGBRIDGE_LOG=warn, default is info)"
printf '%-44s %14s  %-12s %s\n' figure measured target result
row "webhook p50 / bare txn p50 (${w_p50:-?} / ${t_p50:-?} ms)" "${ratio:-n/a}" "<=" 1.3 "$ratio"
row "webhook -> 2xx p99, loopback (ms)" "${w_p99:-n/a}" "<=" 5 "$w_p99"
row "rejections/s, 404 over TLS keep-alive" "$rps" ">=" 20000 "$rps"
row "resident memory idle (MiB)" "$idle_mib" "<=" 10 "$idle_mib"
row "resident memory under load, peak (MiB)" "$load_mib" "<=" 25 "$load_mib"
row "stripped release binary (MiB)" "$bin_mib" "<=" 10 "$bin_mib"
echo
echo "for information: 429 path ${rps_limited:-?} req/s; 404 path at info logging ${rps_info:-?} req/s;"
echo "VmHWM $(mib "$hwm_kib") MiB; peak during the latency run $(mib "${latency_peak_kib:-0}") MiB; keep-alive after a rejection: $keepalive"
[ "$latency_ok" = 1 ] || echo "the latency bench failed: see its output above"
